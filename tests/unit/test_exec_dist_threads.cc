// The executor's worker pool: output files written by 1, 2 or 4 threads are byte-identical, with
// identical manifests; progress is counted once per byte, in order; hash_plan agrees.
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "core/worker_pool.h"
#include "exec/executor.h"
#include "exec/file_jobs.h"
#include "exec/manifest.h"
#include "test_exec_dist_plan.h"

using namespace ckptstream;
using namespace dist_test;

TEST_CASE("worker_count: 0 is one per core, never more than the jobs, at least one") {
  CHECK(worker_count(4, 10) == 4);
  CHECK(worker_count(4, 2) == 2);
  CHECK(worker_count(3, 0) == 1);
  CHECK(worker_count(0, 1000) ==
        std::max(1u, std::min(1000u, std::thread::hardware_concurrency())));
}

TEST_CASE("run_on_workers runs every job once and returns the first failure") {
  for (unsigned workers : {1u, 2u, 4u}) {
    std::atomic<bool> stop{false};
    std::vector<std::atomic<int>> runs(100);
    std::mutex mutex;
    std::set<unsigned> seen_workers;
    Status done = run_on_workers(runs.size(), workers, stop, [&](std::size_t i, unsigned worker) {
      runs[i]++;
      std::lock_guard lock(mutex);
      seen_workers.insert(worker);
      return Status{};
    });
    CHECK(done.ok());
    for (auto& count : runs) CHECK(count == 1);
    for (unsigned worker : seen_workers) CHECK(worker < workers);

    std::atomic<bool> stop2{false};
    std::atomic<int> started{0};
    Status failed = run_on_workers(1000, workers, stop2, [&](std::size_t i, unsigned) -> Status {
      started++;
      if (i == 3) return io_error("job 3 failed");
      return {};
    });
    REQUIRE(!failed.ok());
    CHECK(failed.error().message == "job 3 failed");
    CHECK(stop2.load());
    CHECK(started < 1000);  // no job starts after the failure is seen
  }
}

TEST_CASE("threads: 1, 2 and 4 workers write identical bytes and manifests") {
  TempDir dir("dist");
  Plan plan = many_files_plan(dir.sub("in"), 11);
  std::vector<std::string> manifests;
  for (unsigned threads : {1u, 2u, 4u, 0u}) {
    CAPTURE(threads);
    fs::path out = dir / ("out" + std::to_string(threads));
    fs::create_directories(out);
    ExecOptions options;
    options.threads = threads;
    options.buffer_bytes = 1000;  // many windows per tensor
    options.writeback_bytes = 4096;
    std::mutex mutex;
    std::vector<std::uint64_t> done_values;
    std::uint64_t total_seen = 0;
    options.on_progress = [&](std::uint64_t done, std::uint64_t total) {
      std::lock_guard lock(mutex);  // on_progress is serialised: this never waits
      done_values.push_back(done);
      total_seen = total;
    };
    auto manifest = execute_plan(plan, out, options);
    REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);
    manifests.push_back(manifest_to_json(*manifest));
    CHECK(read_text(out / std::string(kManifestFileName)) == manifests.back());
    CHECK(std::is_sorted(done_values.begin(), done_values.end()));
    CHECK(total_seen == plan.total_size);
    REQUIRE(!done_values.empty());
    CHECK(done_values.back() == plan.total_size);
    if (threads != 1) check_same_tree(dir / "out1", out);

    auto hashed = hash_plan(plan, options);
    REQUIRE_MESSAGE(hashed.ok(), hashed.error().message);
    CHECK(manifest_to_json(*hashed) == manifests.back());
  }
  for (const auto& manifest : manifests) CHECK(manifest == manifests.front());
}

TEST_CASE("worker_options: the buffers are shared out, with a floor per worker") {
  ExecOptions options;  // 16 MiB buffer, 256 MiB writeback
  options.on_progress = [](std::uint64_t, std::uint64_t) {};
  ExecOptions one = worker_options(options, 1);
  CHECK(one.buffer_bytes == options.buffer_bytes);
  CHECK(one.writeback_bytes == options.writeback_bytes);
  CHECK(!one.on_progress);  // progress goes through the shared counter
  ExecOptions two = worker_options(options, 2);
  CHECK(two.buffer_bytes == 8ull << 20);
  CHECK(two.writeback_bytes == 128ull << 20);
  ExecOptions many = worker_options(options, 16);
  CHECK(many.buffer_bytes == 8ull << 20);      // at least 8 MiB: reads and writes stay large
  CHECK(many.writeback_bytes == 64ull << 20);  // at least 64 MiB
  options.buffer_bytes = 1000;
  CHECK(worker_options(options, 4).buffer_bytes == 1000);  // a small buffer is not split
}

TEST_CASE("threads: a plan failing its checks writes nothing, with 1 or 4 workers") {
  TempDir dir("dist");
  Plan plan = many_files_plan(dir.sub("in"), 6);
  plan.files[4].tensors[0].tensor.fragments[0].source.storage_begin = 1ull << 40;  // past the end
  for (unsigned threads : {1u, 4u}) {
    fs::path out = dir / ("out" + std::to_string(threads));
    fs::create_directories(out);
    ExecOptions options;
    options.threads = threads;
    auto manifest = execute_plan(plan, out, options);
    REQUIRE(!manifest.ok());
    CHECK(tree(out).empty());
  }
}
