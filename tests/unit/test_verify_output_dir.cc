// The output directory (exec/output_dir.h) as verify sees it: a process killed at every step of
// a commit never leaves a directory that looks complete but mixes two models, and the next run
// completes the commit; a second run into a locked directory is refused naming the holder;
// staging directories of gone runs are removed; verify reports what is not part of the model and
// what pins each file (header, side files).
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "exec/executor.h"
#include "exec/manifest.h"
#include "exec/output_dir.h"
#include "exec/staging.h"
#include "io/file_lock.h"
#include "plan_builders.h"
#include "safetensors/safetensors.h"
#include "temp_dir.h"
#include "verify/verify.h"

using namespace ckptstream;
namespace fs = std::filesystem;
using ckptstream::testing::bytes_of;
using ckptstream::testing::TempDir;
using ckptstream::testing::write_file;

namespace {

// `count` float32 tensors of 4 elements named `<prefix><i>`, read from `input` (4 KiB of floats
// whose values start at `first`), laid out by the real safetensors planner in shards of at most
// `max_shard` bytes, with the side files given.
Plan model_plan(const fs::path& input, const std::string& prefix, int count,
                std::uint64_t max_shard, std::vector<SideFile> side_files) {
  std::vector<LogicalTensor> tensors;
  for (int i = 0; i < count; ++i) {
    TensorRef ref;
    ref.storage_begin = static_cast<std::uint64_t>(i) * 16;
    ref.storage_nbytes = 16;
    ref.dtype = DType::kF32;
    ref.shape = {4};
    ref.strides = contiguous_strides({4});
    tensors.push_back(ckptstream::testing::tensor(prefix + std::to_string(i), {4}, {{ref, {0}}}));
  }
  Plan plan;
  plan.inputs = {input};
  plan.side_files = std::move(side_files);
  REQUIRE(safetensors::plan_output(std::move(tensors), {max_shard}, plan).ok());
  return plan;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

// The files a loader would take as the model: those the index names, or model.safetensors.
std::optional<std::vector<std::string>> complete_looking(const fs::path& dir) {
  if (fs::exists(dir / "model.safetensors.index.json")) {
    auto index = safetensors::read_index(dir / "model.safetensors.index.json");
    REQUIRE(index.ok());
    std::vector<std::string> files;
    for (const auto& [tensor, file] : index->weight_map) {
      if (!fs::exists(dir / file)) return std::nullopt;
      if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
    }
    files.push_back("config.json");
    return files;
  }
  if (fs::exists(dir / "model.safetensors"))
    return std::vector<std::string>{"model.safetensors", "config.json"};
  return std::nullopt;
}

// True when every file in `names` is byte for byte the one in `reference`.
bool same_files(const fs::path& dir, const fs::path& reference,
                const std::vector<std::string>& names) {
  for (const auto& name : names)
    if (!fs::exists(reference / name) || read_text(dir / name) != read_text(reference / name))
      return false;
  return true;
}

Result<Manifest> write_model(const fs::path& dir, const Plan& plan, bool overwrite,
                             ExecOptions options = {}) {
  CKPT_ASSIGN_OR_RETURN(OutputDir out, OutputDir::prepare(dir, plan, {overwrite, "test"}));
  if (out.already_complete()) return Manifest{};
  return out.write(plan, options);
}

struct Models {
  TempDir dir{"outdir"};
  Plan a, b;
  Models() {
    std::vector<float> values(1024);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) * 0.5f;
    write_file(dir / "in" / "weights.bin", bytes_of(values));
    write_file(dir / "in" / "a" / "config.json", std::string("{\"model\": \"a\"}\n"));
    write_file(dir / "in" / "a" / "tokenizer.json", std::string("{\"a\": 1}\n"));
    write_file(dir / "in" / "b" / "config.json", std::string("{\"model\": \"b\"}\n"));
    // A: 6 tensors in 3 shards, with a tokenizer; B: 4 other tensors in 2 shards, without one.
    a = model_plan(dir / "in" / "weights.bin", "a", 6, 40,
                   {{dir / "in" / "a" / "config.json", "config.json"},
                    {dir / "in" / "a" / "tokenizer.json", "tokenizer.json"}});
    b = model_plan(dir / "in" / "weights.bin", "b", 4, 40,
                   {{dir / "in" / "b" / "config.json", "config.json"}});
    REQUIRE(a.files.size() == 3);
    REQUIRE(b.files.size() == 2);
    REQUIRE(write_model(dir / "ref-a", a, false).ok());
    REQUIRE(write_model(dir / "ref-b", b, false).ok());
  }
};

// Forks; the child writes `plan` into `target` and ends itself right after commit step `step`.
// Returns false when the commit has fewer steps (the child finished).
bool crash_at_step(const fs::path& target, const Plan& plan, bool overwrite, int step) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int steps = 0;
    ExecOptions options;
    options.threads = 1;
    options.after_commit_step = [&] {
      if (++steps == step) ::_exit(0);
    };
    auto written = write_model(target, plan, overwrite, options);
    ::_exit(written.ok() ? 1 : 2);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) != 2);
  return WEXITSTATUS(status) == 0;
}

}  // namespace

TEST_CASE("a process killed at any step of a commit leaves no complete-looking mix of models") {
  Models m;
  for (bool over_a : {true, false}) {
    int step = 1;
    for (;; ++step) {
      CAPTURE(over_a);
      CAPTURE(step);
      fs::path target = m.dir / ("t" + std::to_string(over_a) + "-" + std::to_string(step));
      if (over_a) REQUIRE(write_model(target, m.a, false).ok());
      if (!crash_at_step(target, m.b, over_a, step)) break;
      // What a loader would see now is one model, whole, or nothing complete at all.
      if (auto files = complete_looking(target)) {
        bool is_a = same_files(target, m.dir / "ref-a", *files);
        bool is_b = same_files(target, m.dir / "ref-b", *files);
        CHECK_MESSAGE((is_a || is_b), "a complete-looking mix at step " << step);
      }
      // A re-run of the same plan, without --overwrite, completes the interrupted commit.
      {
        auto out = OutputDir::prepare(target, m.b, {false, "test"});
        REQUIRE_MESSAGE(out.ok(), out.error().message);
        CHECK(out->already_complete());
        REQUIRE(!out->notes().empty());
        CHECK(out->notes().front().find("completed the commit of an interrupted run") == 0);
      }
      auto report = verify_output(target, {});
      REQUIRE_MESSAGE(report.ok(), report.error().message);
      CHECK_MESSAGE(report->problems.empty(), report->problems.front());
      // Exactly B's files: nothing of A is left (its tokenizer, its third shard).
      std::vector<std::string> expected = listing(m.dir / "ref-b");
      CHECK(listing(target) == expected);
      CHECK(same_files(target, m.dir / "ref-b", expected));
    }
    // Every removal and rename was a crash point: A's 6 files (its manifest, index, three
    // shards that B does not rewrite, tokenizer) or none, then B's 5 files; the loop ends one
    // step past the last.
    CHECK(step - 1 == (over_a ? 6 + 5 : 5));
  }
}

TEST_CASE("an interrupted commit of another plan is completed, then needs --overwrite") {
  Models m;
  fs::path target = m.dir / "t";
  REQUIRE(crash_at_step(target, m.a, false, 2));
  auto refused = OutputDir::prepare(target, m.b, {false, "test"});
  REQUIRE(!refused.ok());
  CHECK(refused.error().kind == ErrorKind::kUsage);
  CHECK(refused.error().message.find("completed just now") != std::string::npos);
  REQUIRE(verify_output(target, {})->problems.empty());  // A, complete
  REQUIRE(write_model(target, m.b, true).ok());
  auto report = verify_output(target, {});
  REQUIRE(report.ok());
  CHECK(report->problems.empty());
  CHECK(!fs::exists(target / "tokenizer.json"));  // A's side file, gone with A
}

TEST_CASE("a second run into a locked directory is refused, naming the holder") {
  Models m;
  fs::path target = m.dir / "t";
  fs::create_directories(target);
  auto held = FileLock::acquire(target / kLockFileName, FileLock::Mode::kExclusive, "merge",
                                target.string());
  REQUIRE(held.ok());
  auto refused = OutputDir::prepare(target, m.a, {false, "convert"});
  REQUIRE(!refused.ok());
  CHECK(refused.error().kind == ErrorKind::kIo);
  CHECK(refused.error().message.find("in use by another ckptstream run (pid " +
                                     std::to_string(::getpid())) != std::string::npos);
  CHECK(refused.error().message.find(": merge, since") != std::string::npos);
  auto holder = FileLock::holder(target / kLockFileName);
  REQUIRE(holder);
  CHECK(holder->find("pid " + std::to_string(::getpid())) == 0);
  // The ranks of a distributed run share it, and exclude a one-process run.
  held->release();
  CHECK(!FileLock::holder(target / kLockFileName));
  auto rank0 = FileLock::acquire(target / kLockFileName, FileLock::Mode::kShared, "r0", "t");
  auto rank1 = FileLock::acquire(target / kLockFileName, FileLock::Mode::kShared, "r1", "t");
  REQUIRE(rank0.ok());
  REQUIRE(rank1.ok());
  CHECK(!OutputDir::prepare(target, m.a, {false, "merge"}).ok());
  rank0->release();
  rank1->release();
  CHECK(!fs::exists(target / kLockFileName));  // the last holder removes it
  REQUIRE(write_model(target, m.a, false).ok());
}

TEST_CASE("staging directories of gone runs are removed; a live run's are kept") {
  Models m;
  fs::path target = m.dir / "t";
  fs::create_directories(target);
  // A killed run: its directory and its lock file, which nobody holds.
  write_file(target / ".ckptstream-staging-4242" / "model.safetensors", std::string(5000, 'x'));
  write_file(target / ".ckptstream-staging-4242.lock", std::string("pid 4242 on host: merge\n"));
  // An older killed run without a lock file, and a live one (this test holds its lock).
  write_file(target / ".ckptstream-staging-rank1-17" / "x", std::string("y"));
  write_file(target / ".ckptstream-staging-live-1" / "x", std::string("y"));
  auto live = FileLock::acquire(target / ".ckptstream-staging-live-1.lock",
                                FileLock::Mode::kExclusive, "live", "live");
  REQUIRE(live.ok());
  auto report = verify_output(target, {});
  REQUIRE(!report.ok());  // no model yet: the message says what is there
  CHECK(report.error().message.find(".ckptstream-staging-4242/: left by an interrupted run") !=
        std::string::npos);
  CHECK(report.error().message.find(".ckptstream-staging-live-1/: files being written by a "
                                    "running ckptstream (pid ") != std::string::npos);

  auto out = OutputDir::prepare(target, m.a, {false, "test"});
  REQUIRE_MESSAGE(out.ok(), out.error().message);
  std::vector<std::string> notes = out->notes();
  REQUIRE(notes.size() == 2);
  CHECK(notes[0] == "removed .ckptstream-staging-4242/ (4.9 KiB), left by an interrupted run");
  CHECK(notes[1] == "removed .ckptstream-staging-rank1-17/ (1 B), left by an interrupted run");
  REQUIRE(out->write(m.a, {}).ok());
  CHECK(!fs::exists(target / ".ckptstream-staging-4242"));
  CHECK(!fs::exists(target / ".ckptstream-staging-4242.lock"));
  CHECK(fs::exists(target / ".ckptstream-staging-live-1" / "x"));
}

TEST_CASE("verify reports files that are not part of the model and pins side files") {
  Models m;
  fs::path target = m.dir / "t";
  REQUIRE(write_model(target, m.a, false).ok());
  REQUIRE(verify_output(target, {})->problems.empty());
  auto problems = [&] {
    auto report = verify_output(target, {});
    REQUIRE_MESSAGE(report.ok(), report.error().message);
    return report->problems;
  };
  // A shard the index does not name.
  fs::copy_file(target / "model-00001-of-00003.safetensors",
                target / "model-00004-of-00003.safetensors");
  auto extra = problems();
  REQUIRE(extra.size() == 1);
  CHECK(extra[0] ==
        "model-00004-of-00003.safetensors: not part of the model (the index does "
        "not name it)");
  fs::remove(target / "model-00004-of-00003.safetensors");
  // A side file changed since the run, and one removed.
  write_file(target / "config.json", std::string("{\"model\": \"z\"}\n"));
  auto changed = problems();
  REQUIRE(changed.size() == 1);
  CHECK(changed[0].find("config.json: changed since it was written (checksum ") == 0);
  fs::remove(target / "tokenizer.json");
  CHECK(problems().size() == 2);
  // An interrupted commit's journal.
  write_file(target / ".ckptstream-commit.json", std::string("{}"));
  CHECK(problems().back().find(".ckptstream-commit.json: a commit was interrupted") == 0);
}
