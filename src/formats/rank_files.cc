#include "formats/rank_files.h"

#include <malloc.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "pickle/value.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

// Runs tasks one after another on one thread that lives as long as it does. The rank files'
// opens and unpicklings run on such threads throughout (an opener, one or two builders): a
// short-lived thread per task (2W of them) was often given a fresh malloc arena by glibc (it
// creates up to 8 per core), whose pages were then faulted in again for every rank file.
class SerialWorker {
 public:
  SerialWorker() : thread_([this] { run(); }) {}
  SerialWorker(const SerialWorker&) = delete;
  SerialWorker& operator=(const SerialWorker&) = delete;
  ~SerialWorker() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_one();
    thread_.join();  // after the tasks queued so far
  }

  template <class F>
  auto submit(F f) -> std::future<std::invoke_result_t<F&>> {
    auto task = std::make_shared<std::packaged_task<std::invoke_result_t<F&>()>>(std::move(f));
    auto result = task->get_future();
    {
      std::lock_guard lock(mutex_);
      tasks_.emplace_back([task] { (*task)(); });
    }
    ready_.notify_one();
    return result;
  }

 private:
  void run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;  // last: started once the members it uses exist
};

}  // namespace

class RankFileReader::Impl {
  // Each file opened ahead holds its zip directory and data.pkl (tens of MB for a large model's
  // rank file); opening more than two ahead costs memory and no time (bench/plan_scaling.sh,
  // results in bench/results/plan-scaling-*).
  static constexpr unsigned kMaxOpenAhead = 2;
  // Unpickling is most of the work of a plan of many tensors, while the caller (merging each
  // rank) and the opener need little CPU: two builders nearly halve the time from two threads
  // on, for one more file's graph in memory (bench/results/plan-deepseek-*).
  static constexpr unsigned kTwoBuildersFrom = 2;

 public:
  Impl(const std::vector<fs::path>& files, unsigned threads, const TorchReadOptions& options)
      : files_(files),
        builders_(threads >= kTwoBuildersFrom ? 2 : 1),
        window_(builders_.size() > 1 ? 1 : std::clamp(threads, 2u, kMaxOpenAhead + 1) - 1),
        options_(options) {}

  Result<TorchCheckpoint> next() {
    while (graphs_.size() < builders_.size() && start_graph()) {
    }
    if (graphs_.empty()) return invalid_input("no rank file left to read");
    auto ckpt = graphs_.front().get();
    graphs_.pop_front();
    start_graph();  // the next file's graph is built while the caller merges this one
    return ckpt;
  }

  ~Impl() {
    for (auto& g : graphs_) g.wait();
    for (auto& p : opening_) p.wait();
  }

 private:
  using Opened = std::future<Result<PendingTorchFile>>;

  void fill() {
    while (opening_.size() < window_ && launched_ < files_.size()) {
      const fs::path& path = files_[launched_++];
      opening_.push_back(
          opener_.submit([&path, this] { return PendingTorchFile::open(path, options_); }));
    }
  }

  bool start_graph() {
    fill();
    if (opening_.empty()) return false;
    Opened opened = std::move(opening_.front());
    opening_.pop_front();
    fill();
    SerialWorker& builder = builders_[graphed_++ % builders_.size()];
    graphs_.push_back(builder.submit(
        [opened = std::move(opened), pool = pool_]() mutable -> Result<TorchCheckpoint> {
          auto pending = opened.get();
          if (!pending.ok()) return pending.error();
          CKPT_ASSIGN_OR_RETURN(auto ckpt, std::move(*pending).read(pool));
          ckpt.root.reset();  // the tensors are extracted; the graph would only hold memory
          return ckpt;
        }));
    return true;
  }

  const std::vector<fs::path>& files_;
  std::deque<SerialWorker> builders_;  // step 2, one file at a time each, in turn
  std::size_t window_;
  TorchReadOptions options_;
  std::size_t launched_ = 0, graphed_ = 0;
  std::deque<Opened> opening_;
  std::deque<std::future<Result<TorchCheckpoint>>> graphs_;  // in file order
  std::shared_ptr<pickle::BlockPool> pool_ = std::make_shared<pickle::BlockPool>();
  SerialWorker opener_;  // step 1 of each file, in order
};

RankFileReader::RankFileReader(const std::vector<fs::path>& files, unsigned threads,
                               const TorchReadOptions& options)
    : impl_(std::make_unique<Impl>(files, threads, options)) {}
RankFileReader::~RankFileReader() = default;
Result<TorchCheckpoint> RankFileReader::next() {
  return impl_->next();
}
void RankFileReader::release_freed_memory() {
  ::malloc_trim(0);
}

}  // namespace ckptstream
