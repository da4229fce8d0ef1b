// The output directory of convert and merge, and what may be in it besides the model:
//
//   <target>/.ckptstream.lock            held for the whole run (file_lock.h): exclusively by a
//                                        one-process run, shared by the ranks of a distributed
//                                        run; a second run into the target is refused, naming
//                                        the holder
//   <target>/.ckptstream-staging-*/      files being written (staging.h); left only by a run
//                                        that was killed, and removed by the next run
//   <target>/.ckptstream-commit.json     a commit in progress (staging.h); left only by a run
//                                        killed while renaming, and completed by the next run
//   <target>/.ckptstream/                the completion markers of a distributed run
//                                        (distributed.h), until it is finalized
//
// A one-process run (prepare, then write): creates the directory when missing (and removes it
// again if the run fails before anything landed), takes the lock, removes stale staging
// directories, completes an interrupted commit, and refuses a directory that holds a model
// (or the files of a distributed run that never finished) unless `overwrite`. The commit removes
// the earlier model's index, manifest and model.safetensors before the first rename, and its other
// files that the new model does not replace (named by its manifest, else by name:
// model*.safetensors), so that no instant shows a complete-looking mix of two models.
//
// The ranks of a distributed run share the directory (prepare_shared): each holds the lock
// shared; whichever rank finds no run in progress also recovers and, with `overwrite`, removes
// the earlier model's index, manifest and model.safetensors first. Rank 0 or `finalize`
// completes the run.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/result.h"
#include "exec/distributed.h"
#include "exec/executor.h"
#include "io/file_lock.h"
#include "plan/plan.h"

namespace ckptstream {

inline constexpr std::string_view kLockFileName = ".ckptstream.lock";

struct PrepareOptions {
  bool overwrite = false;
  std::string owner = "ckptstream";  // what the lock file says of this run ("merge")
};

class OutputDir {
 public:
  static Result<OutputDir> prepare(const std::filesystem::path& dir, const Plan& plan,
                                   const PrepareOptions& options);
  // For one rank of a distributed run: the directory is created if missing (and never removed
  // again: other ranks use it). A run in progress (its markers are there) is resumed; a model
  // already there that is this plan's (its manifest pins these files and headers: the other
  // ranks finished the run before this one came) is already_complete; any other model needs
  // `overwrite`.
  static Result<OutputDir> prepare_shared(const std::filesystem::path& dir, const Plan& plan,
                                          const PrepareOptions& options);
  // For `finalize`: a directory holding the markers of a distributed run.
  static Result<OutputDir> open_run(const std::filesystem::path& dir, std::string_view owner);

  OutputDir(OutputDir&& other) noexcept;
  OutputDir(const OutputDir&) = delete;
  ~OutputDir();

  const std::filesystem::path& path() const { return dir_; }
  // What preparing found and did (stale staging removed, an interrupted commit completed).
  const std::vector<std::string>& notes() const { return notes_; }
  // The target already holds this plan's model: an interrupted run of the same plan had staged
  // every file, and its commit was completed by prepare.
  bool already_complete() const { return already_complete_; }

  // Runs the plan into the directory (execute_plan), committing as described above.
  Result<Manifest> write(const Plan& plan, const ExecOptions& options);
  // Writes `plan` into the subdirectory `name` (a LoRA adapter beside the model), replacing what
  // is there, under this directory's lock.
  Result<Manifest> write_subdir(const std::string& name, const Plan& plan,
                                const ExecOptions& options);

  // This rank's files of a distributed run (execute_rank).
  Result<RankReport> write_rank(const Plan& plan, const ExecOptions& options, unsigned rank,
                                unsigned world_size);
  // Completes a distributed run (finalize_plan); then removes stale files of an earlier model.
  Result<Manifest> finalize(const Plan& plan, const FinalizeOptions& options);

 private:
  OutputDir(std::filesystem::path dir, bool created, FileLock lock);
  std::vector<std::string> stale_names(const Plan& plan) const;

  std::filesystem::path dir_;
  bool created_;
  FileLock lock_;
  std::vector<std::string> existing_;  // the earlier model's files, relative names
  std::vector<std::string> notes_;
  bool already_complete_ = false;
};

// What a directory holds of an earlier model: the files its manifest names, its index and
// manifest, and model*.safetensors; relative names, those present only.
std::vector<std::string> existing_model_files(const std::filesystem::path& dir);

}  // namespace ckptstream
