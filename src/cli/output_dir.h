// The output directory of convert and merge: created when missing (and removed again if the run
// fails before anything landed), refused when it already holds a model unless --overwrite, and
// cleared of stale shards of the previous model after a successful run.
#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "exec/executor.h"
#include "plan/plan.h"

namespace ckptstream::cli {

class OutputDir {
 public:
  static Result<OutputDir> prepare(const std::filesystem::path& dir, bool overwrite);
  OutputDir(OutputDir&& other) noexcept;
  OutputDir(const OutputDir&) = delete;
  ~OutputDir();

  // Runs the plan into the directory; on success, removes model files of an earlier model that
  // the new one did not replace.
  Result<Manifest> write(const Plan& plan, const ExecOptions& options);

 private:
  OutputDir(std::filesystem::path dir, bool created, std::vector<std::filesystem::path> existing);
  std::filesystem::path dir_;
  bool created_;
  std::vector<std::filesystem::path> existing_;
};

}  // namespace ckptstream::cli
