#include "exec/output_dir.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>
#include <thread>

#include "exec/manifest.h"
#include "exec/staging.h"
#include "plan/report.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kLoneModelName = "model.safetensors";

bool is_model_file_name(const std::string& name) {
  return name.starts_with("model") && name.ends_with(".safetensors");
}

// Files whose presence says "a complete model is here": removed before anything of a new model
// lands, so that a half-replaced directory never looks complete.
bool is_completion_marker(const std::string& name) {
  return name == kIndexFileName || name == kManifestFileName || name == kLoneModelName;
}

bool is_regular(const fs::path& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// Recovers what interrupted runs left in `dir`: staging directories whose lock is free, and, when
// the caller holds the directory's lock exclusively (no other run can be committing), an
// interrupted commit.
Result<std::optional<InterruptedCommit>> recover(const fs::path& dir, bool exclusive,
                                                 std::vector<std::string>& notes) {
  std::optional<InterruptedCommit> finished;
  if (exclusive) {
    CKPT_ASSIGN_OR_RETURN(finished, finish_interrupted_commit(dir));
    if (finished)
      notes.push_back("completed the commit of an interrupted run (" + finished->staging + ": " +
                      std::to_string(finished->renamed) + " file(s) moved into place)");
  }
  for (const AbandonedDirectory& stale : remove_abandoned_directories(dir, kStagingPrefix))
    notes.push_back("removed " + stale.name + "/ (" + human_bytes(stale.bytes) +
                    "), left by an interrupted run");
  return finished;
}

Result<FileLock> lock_target(const fs::path& dir, FileLock::Mode mode, std::string_view owner) {
  return FileLock::acquire(dir / kLockFileName, mode, owner, dir.string());
}

// The ranks of a distributed run start together: one of them holds the lock exclusively while it
// recovers (seconds at most), the others wait for it that long.
Result<FileLock> lock_shared_waiting(const fs::path& dir, std::string_view owner) {
  constexpr auto kWait = std::chrono::seconds(30);
  auto deadline = std::chrono::steady_clock::now() + kWait;
  for (;;) {
    auto lock = lock_target(dir, FileLock::Mode::kShared, owner);
    if (lock.ok() || std::chrono::steady_clock::now() >= deadline) return lock;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

Error refuse_existing(const fs::path& dir, const std::vector<std::string>& existing,
                      const std::string& why) {
  return usage_error(dir.string() + " already holds a model (" + existing.front() + ")" + why +
                     "; pass --overwrite to replace it");
}

// Does the directory's manifest pin exactly the plan's tensor files (names, sizes, headers)?
bool holds_model_of(const fs::path& dir, const Plan& plan) {
  auto manifest = read_manifest(dir / kManifestFileName);
  if (!manifest.ok() || manifest->files.size() != plan.files.size()) return false;
  for (std::size_t i = 0; i < plan.files.size(); ++i) {
    const FileDigest& have = manifest->files[i];
    const OutputFile& want = plan.files[i];
    if (have.name != want.name || have.size != want.size() ||
        have.header_xxh3_128 != xxh3_128_of(want.header) || !is_regular(dir / want.name))
      return false;
  }
  return true;
}

}  // namespace

std::vector<std::string> existing_model_files(const fs::path& dir) {
  std::set<std::string> names;
  auto manifest_path = dir / kManifestFileName;
  if (is_regular(manifest_path)) {
    names.insert(std::string(kManifestFileName));
    // Another version's or a damaged manifest: the names below still find the model files.
    if (auto manifest = read_manifest(manifest_path); manifest.ok()) {
      for (const auto& file : manifest->files) names.insert(file.name);
      for (const auto& file : manifest->other_files) names.insert(file.name);
    }
  }
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if ((name == kIndexFileName || is_model_file_name(name)) && is_regular(it->path()))
      names.insert(name);
  }
  std::vector<std::string> present;
  for (const auto& name : names)
    if (is_regular(dir / name)) present.push_back(name);
  // What says "complete" first: it is what a message names.
  std::stable_partition(present.begin(), present.end(),
                        [](const std::string& name) { return is_completion_marker(name); });
  return present;
}

OutputDir::OutputDir(fs::path dir, bool created, FileLock lock)
    : dir_(std::move(dir)), created_(created), lock_(std::move(lock)) {}

OutputDir::OutputDir(OutputDir&& other) noexcept
    : dir_(std::move(other.dir_)),
      created_(std::exchange(other.created_, false)),
      lock_(std::move(other.lock_)),
      existing_(std::move(other.existing_)),
      notes_(std::move(other.notes_)),
      already_complete_(other.already_complete_) {}

OutputDir::~OutputDir() {
  lock_.release();  // its file goes too, unless another process holds it
  std::error_code ec;
  if (created_ && fs::is_empty(dir_, ec)) fs::remove(dir_, ec);
}

Result<OutputDir> OutputDir::prepare(const fs::path& dir, const Plan& plan,
                                     const PrepareOptions& options) {
  std::error_code ec;
  bool created = false;
  auto status = fs::status(dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    return io_error(dir.string() + ": " + ec.message());
  if (fs::exists(status)) {
    if (!fs::is_directory(status))
      return usage_error(dir.string() + ": exists and is not a directory");
  } else {
    fs::create_directories(dir, ec);
    if (ec) return io_error(dir.string() + ": cannot create: " + ec.message());
    created = true;
  }
  auto lock = lock_target(dir, FileLock::Mode::kExclusive, options.owner);
  if (!lock.ok()) {
    if (created) fs::remove(dir, ec);
    return lock.error();
  }
  OutputDir out(dir, created, std::move(lock).value());
  CKPT_ASSIGN_OR_RETURN(auto finished, recover(dir, true, out.notes_));
  if (finished) {
    CKPT_ASSIGN_OR_RETURN(std::string fingerprint, plan_fingerprint(plan));
    if (finished->fingerprint == fingerprint) {
      out.already_complete_ = true;
      out.notes_.push_back("that run wrote this same plan: the model in " + dir.string() +
                           " is complete, nothing is rewritten (`verify` checks it)");
      return out;
    }
  }
  out.existing_ = existing_model_files(dir);
  if (!out.existing_.empty() && !options.overwrite)
    return refuse_existing(dir, out.existing_,
                           finished ? " (the interrupted run's, completed just now)" : "");
  return out;
}

Result<OutputDir> OutputDir::prepare_shared(const fs::path& dir, const Plan& plan,
                                            const PrepareOptions& options) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec))
    return io_error(dir.string() + ": cannot create: " + (ec ? ec.message() : "not a directory"));
  // The first rank to come takes the lock exclusively for a moment, to recover what a gone run
  // left; the others find it shared (or wait no longer than the moment: see FileLock).
  std::string owner = options.owner + " (distributed)";
  auto lock = lock_target(dir, FileLock::Mode::kExclusive, owner);
  bool exclusive = lock.ok();
  if (!exclusive) lock = lock_shared_waiting(dir, owner);
  if (!lock.ok()) return lock.error();
  OutputDir out(dir, false, std::move(lock).value());
  CKPT_TRY(recover(dir, exclusive, out.notes_));
  // Listed before looking for the markers: a rank writes a file only after creating them.
  out.existing_ = existing_model_files(dir);
  if (exclusive && !out.lock_.convert(FileLock::Mode::kShared)) {
    CKPT_ASSIGN_OR_RETURN(out.lock_, lock_shared_waiting(dir, owner));
  }
  if (distributed_run_in_progress(dir) || out.existing_.empty()) return out;
  if (holds_model_of(dir, plan)) {
    out.already_complete_ = true;
    out.notes_.push_back(
        "the model of this plan is complete already (the other ranks finished "
        "the run)");
    return out;
  }
  if (!options.overwrite) return refuse_existing(dir, out.existing_, "");
  for (const auto& name : out.existing_)
    if (is_completion_marker(name)) fs::remove(dir / name, ec);
  return out;
}

Result<OutputDir> OutputDir::open_run(const fs::path& dir, std::string_view owner) {
  if (!distributed_run_in_progress(dir))
    return usage_error(dir.string() + " holds no distributed run to finalize (no " +
                       std::string(kMarkerDirName) + "/ markers; already finalized?)");
  CKPT_ASSIGN_OR_RETURN(auto lock, lock_target(dir, FileLock::Mode::kShared, owner));
  OutputDir out(dir, false, std::move(lock));
  out.existing_ = existing_model_files(dir);
  return out;
}

std::vector<std::string> OutputDir::stale_names(const Plan& plan) const {
  std::set<std::string> written{std::string(kManifestFileName)};
  for (const auto& file : plan.files) written.insert(file.name);
  for (const auto& side : plan.side_files) written.insert(side.name);
  for (const auto& text : plan.text_files) written.insert(text.name);
  if (!plan.index_json.empty()) written.insert(std::string(kIndexFileName));
  std::vector<std::string> stale;
  for (const auto& name : existing_)
    if (is_completion_marker(name) || !written.count(name)) stale.push_back(name);
  return stale;
}

Result<Manifest> OutputDir::write(const Plan& plan, const ExecOptions& options) {
  CKPT_ASSIGN_OR_RETURN(auto manifest, execute_plan(plan, dir_, options, stale_names(plan)));
  created_ = false;  // it holds a model now
  existing_.clear();
  // The markers of a distributed run that never finished (none runs: this run held the lock
  // exclusively): this model replaced its files.
  std::error_code ec;
  if (distributed_run_in_progress(dir_)) fs::remove_all(dir_ / kMarkerDirName, ec);
  return manifest;
}

Result<Manifest> OutputDir::write_subdir(const std::string& name, const Plan& plan,
                                         const ExecOptions& options) {
  fs::path sub = dir_ / name;
  std::error_code ec;
  fs::create_directories(sub, ec);
  if (ec) return io_error(sub.string() + ": cannot create: " + ec.message());
  std::vector<std::string> notes;
  CKPT_TRY(recover(sub, true, notes));
  std::vector<std::string> replace;
  for (const auto& existing : existing_model_files(sub)) replace.push_back(existing);
  return execute_plan(plan, sub, options, replace);
}

Result<RankReport> OutputDir::write_rank(const Plan& plan, const ExecOptions& options,
                                         unsigned rank, unsigned world_size) {
  return execute_rank(plan, dir_, options, rank, world_size);
}

Result<Manifest> OutputDir::finalize(const Plan& plan, const FinalizeOptions& options) {
  CKPT_ASSIGN_OR_RETURN(auto manifest, finalize_plan(plan, dir_, options));
  std::error_code ec;
  for (const auto& name : stale_names(plan))
    if (!is_completion_marker(name)) fs::remove(dir_ / name, ec);
  return manifest;
}

}  // namespace ckptstream
