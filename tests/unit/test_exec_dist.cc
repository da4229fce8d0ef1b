// Distributed runs: the assignment of files to ranks, rank detection from launcher variables
// (passed in as maps), and ranks writing their files with completion markers, finalize, and
// resuming after a crash: the result is byte for byte what one process writes.
#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <thread>

#include "exec/distributed.h"
#include "exec/executor.h"
#include "exec/launch_env.h"
#include "exec/manifest.h"
#include "test_exec_dist_plan.h"

using namespace ckptstream;
using namespace dist_test;

namespace {

std::uint64_t max_load_spread(std::span<const std::uint64_t> sizes, unsigned world) {
  std::vector<unsigned> owner = assign_files(sizes, world);
  std::vector<std::uint64_t> load(world, 0);
  for (std::size_t i = 0; i < sizes.size(); ++i) load[owner[i]] += sizes[i];
  return *std::max_element(load.begin(), load.end()) - *std::min_element(load.begin(), load.end());
}

RankDetection detect(const Environment& env, RankRequest request = {}) {
  auto detection = detect_rank(request, env);
  REQUIRE_MESSAGE(detection.ok(), detection.error().message);
  return *detection;
}

std::string detect_error(const Environment& env, RankRequest request = {}) {
  auto detection = detect_rank(request, env);
  REQUIRE(!detection.ok());
  CHECK(detection.error().kind == ErrorKind::kUsage);
  return detection.error().message;
}

fs::file_time_type mtime(const fs::path& path) {
  return fs::last_write_time(path);
}

}  // namespace

// --- assignment ------------------------------------------------------------------------------

TEST_CASE("assign_files: every file exactly once, deterministic, balanced by bytes") {
  std::vector<std::uint64_t> sizes;
  std::uint64_t state = 7;
  for (int i = 0; i < 97; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    sizes.push_back(1000 + (state >> 40) % 100000);
  }
  std::uint64_t largest = *std::max_element(sizes.begin(), sizes.end());
  for (unsigned world : {1u, 2u, 3u, 4u, 8u, 97u, 200u}) {
    CAPTURE(world);
    std::vector<unsigned> owner = assign_files(sizes, world);
    REQUIRE(owner.size() == sizes.size());
    CHECK(owner == assign_files(sizes, world));
    for (unsigned rank : owner) CHECK(rank < world);
    if (world <= sizes.size()) CHECK(max_load_spread(sizes, world) <= largest);
  }
  CHECK(assign_files(sizes, 1) == std::vector<unsigned>(sizes.size(), 0));
}

TEST_CASE("assign_files: largest first to the lightest rank; ties by index and lowest rank") {
  std::vector<std::uint64_t> equal(6, 5);
  CHECK(assign_files(equal, 2) == std::vector<unsigned>{0, 1, 0, 1, 0, 1});
  CHECK(assign_files(equal, 4) == std::vector<unsigned>{0, 1, 2, 3, 0, 1});
  // 10 -> r0; 6 -> r1; 5 -> r1 (6 < 10); 4 -> r0 (10 < 11); 1 -> r1 (11 < 14)
  std::vector<std::uint64_t> sizes{4, 10, 1, 6, 5};
  CHECK(assign_files(sizes, 2) == std::vector<unsigned>{0, 0, 1, 1, 1});
  CHECK(assign_files(std::vector<std::uint64_t>{}, 3).empty());
  std::vector<std::uint64_t> two{3, 3};
  CHECK(assign_files(two, 4) == std::vector<unsigned>{0, 1});  // ranks 2 and 3 get nothing
}

TEST_CASE("files_of_rank: the ranks' files partition the plan") {
  TempDir dir("dist");
  Plan plan = many_files_plan(dir.path, 13);
  for (unsigned world : {1u, 2u, 4u, 5u, 20u}) {
    std::vector<std::size_t> all;
    for (unsigned rank = 0; rank < world; ++rank) {
      auto mine = files_of_rank(plan, rank, world);
      CHECK(std::is_sorted(mine.begin(), mine.end()));
      all.insert(all.end(), mine.begin(), mine.end());
    }
    std::sort(all.begin(), all.end());
    std::vector<std::size_t> want(plan.files.size());
    std::iota(want.begin(), want.end(), std::size_t{0});
    CHECK(all == want);
  }
}

// --- rank detection --------------------------------------------------------------------------

TEST_CASE("detect_rank: no launcher is a single process") {
  auto d = detect({{"HOME", "/root"}, {"PATH", "/bin"}});
  CHECK(d.info.rank == 0);
  CHECK(d.info.world_size == 1);
  CHECK(d.info.source.empty());
  CHECK(d.notes.empty());
}

TEST_CASE("detect_rank: each launcher's variables") {
  auto torchrun = detect({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}});
  CHECK(torchrun.info.rank == 3);
  CHECK(torchrun.info.world_size == 8);
  CHECK(torchrun.info.source == "torchrun (RANK, WORLD_SIZE)");

  auto ompi = detect({{"OMPI_COMM_WORLD_RANK", "2"},
                      {"OMPI_COMM_WORLD_SIZE", "4"},
                      {"PMIX_RANK", "2"},
                      {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}});
  CHECK(ompi.info.rank == 2);
  CHECK(ompi.info.world_size == 4);
  CHECK(ompi.info.source == "Open MPI (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE)");

  auto pmi = detect({{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}});
  CHECK(pmi.info.rank == 1);
  CHECK(pmi.info.world_size == 2);
  CHECK(pmi.info.source == "PMI (PMI_RANK, PMI_SIZE)");

  auto pmix = detect({{"PMIX_RANK", "5"}, {"SLURM_STEP_NUM_TASKS", "6"}});
  CHECK(pmix.info.rank == 5);
  CHECK(pmix.info.world_size == 6);
  CHECK(pmix.info.source == "PMIx (PMIX_RANK, SLURM_STEP_NUM_TASKS)");
  // PMIx alone has no size in the environment: --world-size gives it.
  CHECK(detect_error({{"PMIX_RANK", "1"}}).find("--world-size") != std::string::npos);
  auto pmix_cli = detect({{"PMIX_RANK", "1"}}, {std::nullopt, 3u, true});
  CHECK(pmix_cli.info.rank == 1);
  CHECK(pmix_cli.info.world_size == 3);
  CHECK(pmix_cli.info.source == "command line and PMIx (PMIX_RANK)");

  auto srun = detect({{"SLURM_PROCID", "7"},
                      {"SLURM_NTASKS", "16"},
                      {"SLURM_STEP_NUM_TASKS", "8"},
                      {"SLURM_STEP_ID", "0"},
                      {"SLURM_JOB_ID", "123"}});
  CHECK(srun.info.rank == 7);
  CHECK(srun.info.world_size == 8);  // the step's tasks, not the job's
  CHECK(srun.info.source == "Slurm srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS)");
  auto old_srun = detect({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEPID", "3"}});
  CHECK(old_srun.info.world_size == 2);
  CHECK(old_srun.info.source == "Slurm srun (SLURM_PROCID, SLURM_NTASKS)");
}

TEST_CASE("detect_rank: an sbatch batch script is not rank 0 of an srun step") {
  // The batch script: SLURM_PROCID=0 and the job's SLURM_NTASKS, but no step of srun's.
  for (const char* step : {"", "batch", "extern", "4294967291", "-5"}) {
    CAPTURE(step);
    Environment env{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_JOB_ID", "99"}};
    if (*step) env["SLURM_STEP_ID"] = step;
    auto d = detect(env);
    CHECK(d.info.world_size == 1);
    REQUIRE(d.notes.size() == 1);
    CHECK(d.notes[0].find("SLURM_PROCID ignored") != std::string::npos);
    CHECK(d.notes[0].find("srun") != std::string::npos);
  }
}

TEST_CASE("detect_rank: precedence, --dist none, explicit options, bad values") {
  Environment both{{"RANK", "1"},
                   {"WORLD_SIZE", "2"},
                   {"OMPI_COMM_WORLD_RANK", "3"},
                   {"OMPI_COMM_WORLD_SIZE", "4"}};
  CHECK(detect(both).info.rank == 1);  // torchrun first
  auto none = detect(both, {std::nullopt, std::nullopt, false});
  CHECK(none.info.world_size == 1);
  CHECK(none.info.source.empty());
  auto cli = detect(both, {2u, 3u, true});
  CHECK(cli.info.rank == 2);
  CHECK(cli.info.world_size == 3);
  CHECK(cli.info.source == "command line");
  auto cli_none = detect({}, {1u, 2u, false});
  CHECK(cli_none.info.rank == 1);
  CHECK(cli_none.info.world_size == 2);
  auto rank_from_cli = detect(both, {0u, std::nullopt, true});
  CHECK(rank_from_cli.info.rank == 0);
  CHECK(rank_from_cli.info.world_size == 2);
  CHECK(detect({}, {std::nullopt, 1u, true}).info.world_size == 1);

  CHECK(detect_error({}, {1u, std::nullopt, true}).find("--world-size") != std::string::npos);
  CHECK(detect_error({}, {std::nullopt, 4u, true}).find("--rank") != std::string::npos);
  CHECK(detect_error({}, {4u, 4u, true}).find("not below") != std::string::npos);
  CHECK(detect_error({}, {0u, 0u, true}).find("out of range") != std::string::npos);
  CHECK(detect_error({{"RANK", "x"}, {"WORLD_SIZE", "2"}}).find("RANK=x") != std::string::npos);
  CHECK(detect_error({{"RANK", "-1"}, {"WORLD_SIZE", "2"}}).find("RANK=-1") != std::string::npos);
  CHECK(detect_error({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("torchrun") != std::string::npos);
  auto half = detect({{"RANK", "1"}});
  CHECK(half.info.world_size == 1);
  REQUIRE(half.notes.size() == 1);
  CHECK(half.notes[0] == "RANK is set without WORLD_SIZE: ignored");
}

TEST_CASE("environment_map reads the process environment") {
  ::setenv("CKPT_TEST_VARIABLE", "a=b", 1);
  auto env = environment_map();
  CHECK(env.at("CKPT_TEST_VARIABLE") == "a=b");
  ::unsetenv("CKPT_TEST_VARIABLE");
}

// --- ranks, markers, finalize ----------------------------------------------------------------

TEST_CASE("distributed: 4 ranks at once, rank 0 finalizing, equal one process byte for byte") {
  TempDir dir("dist");
  Plan plan = many_files_plan(dir.sub("in"), 10);
  fs::create_directories(dir / "single");
  auto single = execute_plan(plan, dir / "single", ExecOptions{});
  REQUIRE_MESSAGE(single.ok(), single.error().message);

  fs::path out = dir / "dist";
  fs::create_directories(out);
  constexpr unsigned kWorld = 4;
  std::vector<std::optional<Result<RankReport>>> reports(kWorld);
  std::optional<Result<Manifest>> finalized;
  std::vector<std::thread> ranks;
  for (unsigned rank = 0; rank < kWorld; ++rank) {
    ranks.emplace_back([&, rank] {
      ExecOptions options;
      options.threads = 2;
      reports[rank] = execute_rank(plan, out, options, rank, kWorld);
      if (rank == 0 && reports[rank]->ok()) {
        FinalizeOptions wait;
        wait.wait_timeout = std::chrono::seconds(60);
        finalized = finalize_plan(plan, out, wait);
      }
    });
  }
  for (auto& thread : ranks) thread.join();
  std::size_t written = 0;
  for (unsigned rank = 0; rank < kWorld; ++rank) {
    REQUIRE_MESSAGE(reports[rank]->ok(), reports[rank]->error().message);
    CHECK((*reports[rank])->skipped.empty());
    CHECK((*reports[rank])->written.size() == files_of_rank(plan, rank, kWorld).size());
    written += (*reports[rank])->written.size();
  }
  CHECK(written == plan.files.size());
  REQUIRE(finalized);
  REQUIRE_MESSAGE(finalized->ok(), finalized->error().message);
  CHECK(manifest_to_json(**finalized) == manifest_to_json(*single));
  check_same_tree(dir / "single", out);  // no markers, no staging left
}

TEST_CASE("distributed: a crash, finalize refusing, and a resume that skips complete files") {
  TempDir dir("dist");
  Plan plan = many_files_plan(dir.sub("in"), 9);
  fs::create_directories(dir / "single");
  REQUIRE(execute_plan(plan, dir / "single", ExecOptions{}).ok());
  fs::path out = dir / "dist";
  fs::create_directories(out);
  constexpr unsigned kWorld = 4;

  // Ranks 0..2 finish, rank 3 never ran.
  for (unsigned rank = 0; rank < 3; ++rank) REQUIRE(execute_rank(plan, out, {}, rank, kWorld).ok());
  CHECK(distributed_run_in_progress(out));
  auto early = finalize_plan(plan, out, {});
  REQUIRE(!early.ok());
  CHECK(early.error().kind == ErrorKind::kIo);
  auto missing = files_of_rank(plan, 3, kWorld);
  REQUIRE(!missing.empty());
  CHECK(early.error().message.find(plan.files[missing[0]].name) != std::string::npos);
  CHECK(!fs::exists(out / std::string(kManifestFileName)));
  CHECK(!fs::exists(out / std::string(kIndexFileName)));

  // Markers: the file's manifest entry and its header hash.
  const OutputFile& first = plan.files[files_of_rank(plan, 0, kWorld)[0]];
  auto marker = read_manifest(out / ".ckptstream" / (first.name + ".done"));
  REQUIRE_MESSAGE(marker.ok(), marker.error().message);
  REQUIRE(marker->files.size() == 1);
  CHECK(marker->files[0].name == first.name);
  CHECK(marker->files[0].size == first.size());
  CHECK(read_text(out / ".ckptstream" / (first.name + ".done")).find("\"header_xxh3_128\"") !=
        std::string::npos);
  REQUIRE(completed_file(first, out));

  // A stale marker (another plan's header) and a truncated file are redone; the rest is kept.
  const OutputFile& second = plan.files[files_of_rank(plan, 1, kWorld)[0]];
  OutputFile other_plan = second;
  other_plan.header[0] = 'X';
  CHECK(!completed_file(other_plan, out));
  fs::resize_file(out / second.name, second.size() - 1);
  CHECK(!completed_file(second, out));
  std::map<std::string, fs::file_time_type> before;
  for (const auto& file : plan.files)
    if (fs::exists(out / file.name)) before[file.name] = mtime(out / file.name);

  // The re-run: every rank again (rank 0 finalizing).
  std::size_t skipped = 0, rewritten = 0;
  for (unsigned rank = 0; rank < kWorld; ++rank) {
    auto report = execute_rank(plan, out, {}, rank, kWorld);
    REQUIRE_MESSAGE(report.ok(), report.error().message);
    skipped += report->skipped.size();
    rewritten += report->written.size();
    for (const auto& name : report->skipped) CHECK(mtime(out / name) == before.at(name));
    if (rank == 1) CHECK(std::count(report->written.begin(), report->written.end(), second.name));
  }
  CHECK(rewritten == missing.size() + 1);
  CHECK(skipped == plan.files.size() - rewritten);
  auto manifest = finalize_plan(plan, out, {});
  REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);
  CHECK(!distributed_run_in_progress(out));
  check_same_tree(dir / "single", out);
}

TEST_CASE("distributed: more ranks than files; finalize waits, then times out") {
  TempDir dir("dist");
  Plan plan = many_files_plan(dir.sub("in"), 2);
  fs::path out = dir / "dist";
  fs::create_directories(out);
  for (unsigned rank = 2; rank < 5; ++rank) {
    auto report = execute_rank(plan, out, {}, rank, 5);
    REQUIRE(report.ok());
    CHECK(report->written.empty());
  }
  CHECK(tree(out).empty());  // ranks with no file touch nothing
  REQUIRE(execute_rank(plan, out, {}, 0, 5).ok());
  FinalizeOptions wait;
  wait.wait_timeout = std::chrono::milliseconds(300);
  std::size_t looks = 0;
  wait.on_wait = [&](std::size_t done, std::size_t total) {
    ++looks;
    CHECK(done == 1);
    CHECK(total == 2);
  };
  auto start = std::chrono::steady_clock::now();
  auto timed_out = finalize_plan(plan, out, wait);
  CHECK(!timed_out.ok());
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(300));
  CHECK(looks >= 2);
  REQUIRE(execute_rank(plan, out, {}, 1, 5).ok());
  CHECK(finalize_plan(plan, out, {}).ok());
}
