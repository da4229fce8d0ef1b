// `ckptstream verify OUT`: every tensor's checksum and the safetensors / index invariants;
// `--reference REF`: values against another model; `--source --local_dir DIR`: checksums
// recomputed from the training checkpoint, writing nothing.
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"
#include "plan/report.h"

namespace ckptstream::cli {
namespace fs = std::filesystem;

namespace {}  // namespace

void add_verify(CLI::App& app, VerifyArgs& args) {
  auto* cmd =
      app.add_subcommand("verify",
                         "Check a model written by ckptstream: checksums against its manifest, and "
                         "optionally values against a reference or checksums against the source");
  cmd->add_option("dir", args.dir, "the output directory")->required();
  cmd->add_option("--reference", args.reference,
                  "also compare every tensor with this Hugging Face model (name, shape, dtype, "
                  "values)");
  add_tolerance_options(*cmd, args.atol, args.rtol);
  cmd->add_flag("--source", args.source,
                "also recompute the checksums from the source checkpoint (--local_dir ...)");
  add_checkpoint_options(*cmd, args.checkpoint, false);
}

int run_verify(const VerifyArgs& args) {
  bool quiet = args.checkpoint.quiet;
  if (args.source && args.checkpoint.local_dir.empty())
    return report_error(usage_error("--source needs --local_dir (the checkpoint it came from)"));
  ProgressBar bar("verify", quiet);
  VerifyOptions options;
  options.interrupt = args.checkpoint.conversion.interrupt;
  options.on_progress = [&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };
  auto report = verify_output(args.dir, options);
  bar.finish();
  if (!report.ok()) return report_error(report.error());
  auto problems = report->problems;

  if (args.source) {
    auto plan = plan_from_args(args.checkpoint);
    if (!plan.ok()) return report_error(plan.error());
    ProgressBar source_bar("source", quiet);
    DistArgs single;
    single.dist = "none";
    WriteOptions hashing =
        write_options(single, false, true, "verify", args.checkpoint.conversion.threads,
                      args.checkpoint.conversion.interrupt, source_bar);
    auto found = compare_with_source(*plan, args.dir, hashing);
    source_bar.finish();
    if (!found.ok()) return report_error(found.error());
    problems.insert(problems.end(), found->begin(), found->end());
  }
  if (!quiet)
    for (const auto& note : report->notes) std::fprintf(stderr, "note: %s\n", note.c_str());
  for (const auto& problem : problems)
    std::fprintf(stderr, "ckptstream: verify: %s\n", problem.c_str());
  if (!problems.empty()) {
    std::fprintf(stderr, "ckptstream: verify: FAILED: %zu problem%s in %s\n", problems.size(),
                 problems.size() == 1 ? "" : "s", args.dir.c_str());
    return kExitMismatch;
  }
  if (!quiet)
    std::printf(
        "verified %zu tensors (%s) in %zu file%s and %zu other file%s: all checksums "
        "match%s\n",
        report->tensors, human_bytes(report->bytes).c_str(), report->files,
        report->files == 1 ? "" : "s", report->other_files, report->other_files == 1 ? "" : "s",
        args.source ? " the source" : "");
  if (!args.reference.empty()) {
    CompareOptions compare;
    compare.atol = args.atol;
    compare.rtol = args.rtol;
    auto compared = compare_dirs(args.dir, args.reference, compare);
    if (!compared.ok()) return report_error(compared.error());
    return print_comparison(*compared, args.reference, quiet);
  }
  return kExitOk;
}

}  // namespace ckptstream::cli
