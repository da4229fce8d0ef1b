// Distributed runs without collectives: N processes (started by torchrun, srun, mpirun, or by
// hand with --rank/--world-size; launch_env.h) each plan the same model (planning is
// deterministic), take their share of the output tensor files, and meet through the file
// system only.
//
//   1. assign_files: every tensor file goes to exactly one rank, balancing bytes: files by size,
//      largest first (ties: plan order), each to the rank with the fewest bytes so far (ties:
//      lowest rank). Deterministic, so every rank computes the same assignment without talking.
//   2. execute_rank: a rank reads only the input bytes of its files and writes only its files,
//      each through its own staging directory (`.ckptstream-staging-rank<R>-<pid>/`): written,
//      fdatasynced, renamed into place, then its completion marker is written (below). Files
//      whose marker matches are skipped: re-running after a crash redoes only what is missing.
//   3. finalize_plan (rank 0 once its own files are done, or `ckptstream finalize`): waits until
//      every tensor file has its marker, then writes the side files, generated text files, the
//      index and the manifest (its entries taken from the markers) exactly as a single-process
//      run does, and removes the marker directory. The result is byte for byte what one process
//      writes.
//
// A completion marker is `<target>/.ckptstream/<file>.done`: the file's manifest entry as a
// one-file manifest (manifest.h format: name, size, header hash, each tensor's dtype, shape,
// offsets and XXH3-128). A marker matches the plan when the name, size, header hash and tensor
// names agree and the file in the target has that size; a stale marker (another plan: dtype,
// shard size, ...) is removed and the file rewritten.
// The tensor bytes are not re-read: a changed training checkpoint with the same plan is not
// noticed (delete `.ckptstream/` to start over; `verify OUT --source` checks everything).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/result.h"
#include "core/interrupt.h"
#include "exec/executor.h"
#include "plan/plan.h"

namespace ckptstream {

inline constexpr std::string_view kMarkerDirName = ".ckptstream";

// The rank that writes each file (by index), for files of these sizes.
std::vector<unsigned> assign_files(std::span<const std::uint64_t> sizes, unsigned world_size);
// The indexes into plan.files that `rank` writes, in plan order.
std::vector<std::size_t> files_of_rank(const Plan& plan, unsigned rank, unsigned world_size);

// Does the target hold the markers of a distributed run not yet finalized?
bool distributed_run_in_progress(const std::filesystem::path& target_dir);

// The digest recorded by `file`'s marker in the target, if the marker matches the plan's file
// and the target holds the file at its size.
std::optional<FileDigest> completed_file(const OutputFile& file,
                                         const std::filesystem::path& target_dir);

struct RankReport {
  std::vector<std::string> written;
  std::vector<std::string> skipped;  // complete from an earlier run (their marker matched)
};

// Writes rank `rank`'s files of the plan into the target (step 2 above), on
// ExecOptions::threads workers. Progress counts the bytes of the files written.
Result<RankReport> execute_rank(const Plan& plan, const std::filesystem::path& target_dir,
                                const ExecOptions& options, unsigned rank, unsigned world_size);

struct FinalizeOptions {
  // How long to wait for the other ranks' markers; zero: look once.
  std::chrono::milliseconds wait_timeout{0};
  // Called at each look with (files complete, files in the plan); may be empty.
  std::function<void(std::size_t, std::size_t)> on_wait;
  const InterruptFlag* interrupt = nullptr;  // stops the wait; may be null
};

// Step 3 above. Fails (I/O error, naming the missing files) when the markers are still
// incomplete at the end of the wait; then nothing is written and finalize can be run again.
Result<Manifest> finalize_plan(const Plan& plan, const std::filesystem::path& target_dir,
                               const FinalizeOptions& options);

}  // namespace ckptstream
