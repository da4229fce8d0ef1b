// `ckptstream verify OUT`: every tensor's checksum and the safetensors / index invariants.
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"
#include "verify/verify.h"

namespace ckptstream::cli {

void add_verify(CLI::App& app, VerifyArgs& args) {
  auto* cmd = app.add_subcommand(
      "verify", "Check a model written by ckptstream against its checksum manifest");
  cmd->add_option("dir", args.dir, "the output directory")->required();
  cmd->add_flag("--quiet,-q", args.quiet, "print only problems");
}

int run_verify(const VerifyArgs& args) {
  ProgressBar bar("verify", args.quiet);
  VerifyOptions options;
  options.on_progress = [&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };
  auto report = verify_output(args.dir, options);
  bar.finish();
  if (!report.ok()) return report_error(report.error());
  for (const auto& problem : report->problems)
    std::fprintf(stderr, "ckptstream: verify: %s\n", problem.c_str());
  if (!report->problems.empty()) {
    std::fprintf(stderr, "ckptstream: verify: FAILED: %zu problem%s in %s\n",
                 report->problems.size(), report->problems.size() == 1 ? "" : "s",
                 args.dir.c_str());
    return kExitMismatch;
  }
  if (!args.quiet)
    std::printf("verified %zu tensors (%s) in %zu file%s: all checksums match\n", report->tensors,
                human_bytes(report->bytes).c_str(), report->files, report->files == 1 ? "" : "s");
  return kExitOk;
}

}  // namespace ckptstream::cli
