#include "exec/distributed.h"

#include <algorithm>
#include <numeric>
#include <thread>

#include "exec/file_jobs.h"
#include "exec/manifest.h"
#include "exec/staging.h"
#include "io/file_lock.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

std::string marker_name(const OutputFile& file) {
  return std::string(kMarkerDirName) + "/" + file.name + ".done";
}

// A one-file manifest: the file's entry pins its header too.
std::string marker_json(const FileDigest& digest) {
  Manifest manifest;
  manifest.files.push_back(digest);
  return manifest_to_json(manifest);
}

bool same_tensor_names(const OutputFile& file, const FileDigest& digest) {
  return std::equal(file.tensors.begin(), file.tensors.end(), digest.tensors.begin(),
                    digest.tensors.end(), [](const PlacedTensor& placed, const TensorDigest& d) {
                      return placed.tensor.name == d.name;
                    });
}

Status write_marker(const OutputStaging& staging, const OutputFile& file,
                    const FileDigest& digest) {
  std::string name = marker_name(file);
  CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(name));
  CKPT_TRY(write_small_file(path, marker_json(digest)));
  return staging.commit_one(name);
}

std::string missing_files_message(const Plan& plan, const std::vector<bool>& complete) {
  std::size_t missing =
      static_cast<std::size_t>(std::count(complete.begin(), complete.end(), false));
  std::string names;
  std::size_t listed = 0;
  for (std::size_t i = 0; i < plan.files.size() && listed < 5; ++i) {
    if (complete[i]) continue;
    names += (listed++ ? ", " : "") + plan.files[i].name;
  }
  if (missing > listed) names += ", ...";
  return std::to_string(missing) + " of " + std::to_string(plan.files.size()) +
         " files are not complete yet (" + names +
         "): their ranks are still running or failed; run them (again), then finalize";
}

}  // namespace

std::vector<unsigned> assign_files(std::span<const std::uint64_t> sizes, unsigned world_size) {
  std::vector<std::size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return sizes[a] > sizes[b]; });
  std::vector<std::uint64_t> load(std::max(1u, world_size), 0);
  std::vector<unsigned> owner(sizes.size(), 0);
  for (std::size_t index : order) {
    auto lightest = std::min_element(load.begin(), load.end());  // first of equals: lowest rank
    owner[index] = static_cast<unsigned>(lightest - load.begin());
    *lightest += sizes[index];
  }
  return owner;
}

std::vector<std::size_t> files_of_rank(const Plan& plan, unsigned rank, unsigned world_size) {
  std::vector<std::uint64_t> sizes;
  for (const OutputFile& file : plan.files) sizes.push_back(file.size());
  std::vector<unsigned> owner = assign_files(sizes, world_size);
  std::vector<std::size_t> mine;
  for (std::size_t i = 0; i < owner.size(); ++i)
    if (owner[i] == rank) mine.push_back(i);
  return mine;
}

bool distributed_run_in_progress(const fs::path& target_dir) {
  std::error_code ec;
  return fs::is_directory(target_dir / kMarkerDirName, ec);
}

std::optional<FileDigest> completed_file(const OutputFile& file, const fs::path& target_dir) {
  fs::path path = target_dir / marker_name(file);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  auto marker = read_manifest(path);
  if (!marker.ok() || marker->version != kManifestVersion || marker->files.size() != 1)
    return std::nullopt;
  FileDigest& digest = marker->files.front();
  if (digest.name != file.name || digest.size != file.size() || !same_tensor_names(file, digest))
    return std::nullopt;
  if (digest.header_xxh3_128 != xxh3_128_of(file.header)) return std::nullopt;
  auto size = fs::file_size(target_dir / file.name, ec);
  if (ec || size != file.size()) return std::nullopt;
  return std::move(digest);
}

Result<RankReport> execute_rank(const Plan& plan, const fs::path& target_dir,
                                const ExecOptions& options, unsigned rank, unsigned world_size) {
  CKPT_ASSIGN_OR_RETURN(std::vector<InputFile> inputs, open_inputs(plan));
  CKPT_TRY(check_plan(plan, inputs));
  RankReport report;
  std::vector<std::size_t> pending;
  for (std::size_t index : files_of_rank(plan, rank, world_size)) {
    const OutputFile& file = plan.files[index];
    if (completed_file(file, target_dir)) {
      report.skipped.push_back(file.name);
      continue;
    }
    std::error_code ec;
    fs::remove(target_dir / marker_name(file), ec);  // stale: no marker while it is rewritten
    pending.push_back(index);
  }
  if (pending.empty()) return report;
  std::error_code ec;
  // Markers mirror the files' names, subdirectories included (a Megatron checkpoint's
  // release/__0_0.distcp).
  for (std::size_t index : pending) {
    fs::path marker_dir = (target_dir / marker_name(plan.files[index])).parent_path();
    fs::create_directories(marker_dir, ec);
    if (ec) return io_error(marker_dir.string() + ": cannot create: " + ec.message());
  }
  CKPT_ASSIGN_OR_RETURN(OutputStaging staging,
                        OutputStaging::create(target_dir, "rank" + std::to_string(rank)));
  auto write_and_mark = [&](const OutputFile& file, ExecContext& context) -> Result<FileDigest> {
    // Two runs into one target must not write the same file at once (file_lock.h).
    CKPT_ASSIGN_OR_RETURN(
        FileLock lock,
        FileLock::acquire(target_dir / (marker_name(file) + ".lock"), FileLock::Mode::kExclusive,
                          "rank " + std::to_string(rank), (target_dir / file.name).string()));
    CKPT_ASSIGN_OR_RETURN(FileDigest digest, write_output_file(file, staging, context));
    CKPT_TRY(staging.commit_one(file.name));
    CKPT_TRY(write_marker(staging, file, digest));
    return digest;
  };
  CKPT_TRY(run_file_jobs(plan, pending, inputs, options, write_and_mark));
  for (std::size_t index : pending) report.written.push_back(plan.files[index].name);
  return report;
}

Result<Manifest> finalize_plan(const Plan& plan, const fs::path& target_dir,
                               const FinalizeOptions& options) {
  using Clock = std::chrono::steady_clock;
  auto deadline = Clock::now() + options.wait_timeout;
  auto pause = std::chrono::milliseconds(50);
  Manifest manifest;
  manifest.files.resize(plan.files.size());
  std::vector<bool> complete(plan.files.size(), false);
  std::size_t done = 0;
  for (;;) {
    for (std::size_t i = 0; i < plan.files.size(); ++i) {
      if (complete[i]) continue;
      auto digest = completed_file(plan.files[i], target_dir);
      if (!digest) continue;
      manifest.files[i] = std::move(*digest);
      complete[i] = true;
      ++done;
    }
    if (options.on_wait) options.on_wait(done, plan.files.size());
    if (done == plan.files.size()) break;
    CKPT_TRY(check_interrupt(options.interrupt));
    if (Clock::now() >= deadline) return io_error(missing_files_message(plan, complete));
    auto wake = Clock::now() + std::min<Clock::duration>(
                                   pause, std::max<Clock::duration>(deadline - Clock::now(), {}));
    while (Clock::now() < wake && !interrupt_requested(options.interrupt))  // naps of 1/4 s
      std::this_thread::sleep_for(
          std::min<Clock::duration>(std::chrono::milliseconds(250), wake - Clock::now()));
    pause = std::min(pause * 2, std::chrono::milliseconds(2000));
  }
  CKPT_ASSIGN_OR_RETURN(
      FileLock lock,
      FileLock::acquire(target_dir / kMarkerDirName / "finalize.lock", FileLock::Mode::kExclusive,
                        "finalize", "the finalization of " + target_dir.string()));
  CKPT_ASSIGN_OR_RETURN(OutputStaging staging, OutputStaging::create(target_dir, "finalize"));
  CommitList commit;
  CKPT_TRY(stage_finishing_files(plan, manifest, staging, commit.rename));
  CKPT_TRY(staging.commit(commit));
  std::error_code ec;
  fs::remove_all(target_dir / kMarkerDirName, ec);
  if (ec)
    return io_error((target_dir / kMarkerDirName).string() + ": cannot remove: " + ec.message());
  return manifest;
}

}  // namespace ckptstream
