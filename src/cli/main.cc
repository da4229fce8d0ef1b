// ckptstream: sharded training checkpoints to Hugging Face safetensors, streamed.
#include <cstdio>

#include "cli/commands.h"

namespace ckptstream::cli {

int exit_code_for(const Error& error) {
  switch (error.kind) {
    case ErrorKind::kMismatch:
      return kExitMismatch;
    case ErrorKind::kUsage:
      return kExitUsage;
    case ErrorKind::kInvalidInput:
    case ErrorKind::kUnsupported:
      return kExitBadInput;
    case ErrorKind::kIo:
      return kExitIo;
  }
  return kExitBadInput;
}

int report_error(const Error& error) {
  std::fprintf(stderr, "ckptstream: error: %s\n", error.message.c_str());
  return exit_code_for(error);
}

}  // namespace ckptstream::cli

int main(int argc, char** argv) {
  using namespace ckptstream::cli;
  CLI::App app{
      "ckptstream: turns sharded training checkpoints into Hugging Face safetensors, streaming "
      "bytes with small, flat memory.\nExit codes: 0 ok, 1 verification found a difference, "
      "2 usage error, 3 bad or unsupported input, 4 I/O error."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ckptstream 0.1.0");

  InspectArgs inspect;
  ConvertArgs convert;
  MergeArgs merge;
  PlanArgs plan;
  TestArgs test;
  VerifyArgs verify;
  FinalizeArgs finalize;
  add_inspect(app, inspect);
  add_convert(app, convert);
  add_merge(app, merge);
  add_plan(app, plan);
  add_test(app, test);
  add_verify(app, verify);
  add_finalize(app, finalize);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  if (app.got_subcommand("inspect")) return run_inspect(inspect);
  if (app.got_subcommand("convert")) return run_convert(convert);
  if (app.got_subcommand("merge")) return run_merge(merge);
  if (app.got_subcommand("plan")) return run_plan(plan);
  if (app.got_subcommand("test")) return run_test(test);
  if (app.got_subcommand("verify")) return run_verify(verify);
  if (app.got_subcommand("finalize")) return run_finalize(finalize);
  return kExitUsage;
}
