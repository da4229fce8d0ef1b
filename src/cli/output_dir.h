// The output directory of convert and merge: created when missing (and removed again if the run
// fails before anything landed), refused when it already holds a model unless --overwrite, and
// cleared of stale shards of the previous model after a successful run. The ranks of a
// distributed run (exec/distributed.h) share it: prepare_shared lets every rank in while the
// run's markers are there (resume), and rank 0 or `finalize` completes it.
#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "exec/distributed.h"
#include "exec/executor.h"
#include "plan/plan.h"

namespace ckptstream::cli {

class OutputDir {
 public:
  static Result<OutputDir> prepare(const std::filesystem::path& dir, bool overwrite);
  OutputDir(OutputDir&& other) noexcept;
  OutputDir(const OutputDir&) = delete;
  ~OutputDir();

  // For one rank of a distributed run: the directory is created if missing (and never removed
  // again: other ranks use it). A run in progress (its markers are there) is resumed; otherwise
  // a model already there needs `overwrite`, and then its index and manifest are removed first,
  // so that the directory does not look complete while its files are replaced.
  static Result<OutputDir> prepare_shared(const std::filesystem::path& dir, bool overwrite);
  // For `finalize`: a directory holding the markers of a distributed run.
  static Result<OutputDir> open_run(const std::filesystem::path& dir);

  // Runs the plan into the directory; on success, removes model files of an earlier model that
  // the new one did not replace (and the markers of an interrupted distributed run).
  Result<Manifest> write(const Plan& plan, const ExecOptions& options);

  // This rank's files of a distributed run (execute_rank).
  Result<RankReport> write_rank(const Plan& plan, const ExecOptions& options, unsigned rank,
                                unsigned world_size);
  // Completes a distributed run (finalize_plan); then removes stale files as write() does.
  Result<Manifest> finalize(const Plan& plan, const FinalizeOptions& options);

 private:
  OutputDir(std::filesystem::path dir, bool created, std::vector<std::filesystem::path> existing);
  void remove_stale(const Plan& plan);
  std::filesystem::path dir_;
  bool created_;
  std::vector<std::filesystem::path> existing_;
};

}  // namespace ckptstream::cli
