#include "core/worker_pool.h"

#include <algorithm>
#include <exception>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

namespace ckptstream {

unsigned worker_count(unsigned requested, std::size_t jobs) {
  std::size_t workers = requested != 0 ? requested : std::thread::hardware_concurrency();
  return static_cast<unsigned>(std::max<std::size_t>(1, std::min(workers, jobs)));
}

Status run_on_workers(std::size_t count, unsigned workers, std::atomic<bool>& stop,
                      const std::function<Status(std::size_t index, unsigned worker)>& job) {
  std::atomic<std::size_t> next{0};
  std::mutex mutex;
  std::optional<Error> first_failure;
  auto fail = [&](Error error) {
    std::lock_guard lock(mutex);
    if (!first_failure) first_failure = std::move(error);
    stop.store(true);
  };
  auto work = [&](unsigned worker) {
    while (!stop.load()) {
      std::size_t index = next.fetch_add(1);
      if (index >= count) return;
      try {
        Status done = job(index, worker);
        if (!done.ok()) fail(done.error());
      } catch (const std::exception& e) {
        fail(io_error(std::string("worker failed: ") + e.what()));
      }
    }
  };
  std::vector<std::thread> threads;
  for (unsigned worker = 1; worker < std::max(1u, workers); ++worker) {
    try {
      threads.emplace_back(work, worker);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the ones running take every job
    }
  }
  work(0);
  for (auto& thread : threads) thread.join();
  if (first_failure) return *first_failure;
  return {};
}

}  // namespace ckptstream
