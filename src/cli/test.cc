// `ckptstream test` (verl's `python -m verl.model_merger test`): merges the checkpoint in a
// stream, writing nothing, and compares every tensor with a reference Hugging Face model.
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"

namespace ckptstream::cli {

void add_test(CLI::App& app, TestArgs& args) {
  auto* cmd = add_checkpoint_command(
      app, "test",
      "Compare what merge would write with a reference Hugging Face model (verl's test)",
      args.checkpoint);
  cmd->add_option("--test_hf_dir,--test-hf-dir", args.test_hf_dir, "the reference model directory")
      ->required();
  add_tolerance_options(*cmd, args.atol, args.rtol);
}

int print_comparison(const CompareReport& report, const std::filesystem::path& reference,
                     bool quiet) {
  for (const auto& problem : report.problems)
    std::fprintf(stderr, "ckptstream: compare: %s\n", problem.c_str());
  if (report.worst) std::fprintf(stderr, "worst: %s\n", describe(*report.worst).c_str());
  if (!report.ok()) {
    std::fprintf(stderr, "ckptstream: FAILED: %zu difference%s from %s\n", report.problems.size(),
                 report.problems.size() == 1 ? "" : "s", reference.c_str());
    return kExitMismatch;
  }
  if (!quiet)
    std::printf("%zu tensors (%s) match %s\n", report.tensors_compared,
                human_bytes(report.bytes_compared).c_str(), reference.c_str());
  return kExitOk;
}

void add_tolerance_options(CLI::App& cmd, double& atol, double& rtol) {
  cmd.add_option("--atol", atol, "absolute tolerance (default 0: exact)")->capture_default_str();
  cmd.add_option("--rtol", rtol, "relative tolerance (default 0: exact)")->capture_default_str();
}

std::vector<std::string> skipped_names(const CheckpointArgs& args) {
  // As verl's test: a value model or tied embeddings have no lm_head to compare.
  if (args.conversion.value_model || args.conversion.tie_word_embedding) return {"lm_head.weight"};
  return {};
}

int run_test(const TestArgs& args) {
  auto plan = plan_from_args(args.checkpoint);
  if (!plan.ok()) return report_error(plan.error());
  ProgressBar bar("test", args.checkpoint.quiet);
  CompareOptions options;
  options.atol = args.atol;
  options.rtol = args.rtol;
  options.skip = skipped_names(args.checkpoint);
  options.on_progress = [&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };
  auto report =
      compare_plan(*plan, args.test_hf_dir, options, args.checkpoint.conversion.interrupt);
  bar.finish();
  if (!report.ok()) return report_error(report.error());
  return print_comparison(*report, args.test_hf_dir, args.checkpoint.quiet);
}

}  // namespace ckptstream::cli
