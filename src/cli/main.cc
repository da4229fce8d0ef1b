// ckptstream: sharded training checkpoints to Hugging Face safetensors, streamed.
#include <cstdio>
#include <exception>
#include <filesystem>
#include <new>

#include "cli/commands.h"
#include "cli/signals.h"

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
    case ErrorKind::kInterrupted:
      return kExitInterrupted;
  }
  return kExitBadInput;
}

int report_error(const Error& error) {
  if (error.kind == ErrorKind::kInterrupted)
    std::fprintf(stderr, "ckptstream: stopped: %s\n", error.message.c_str());
  else
    std::fprintf(stderr, "ckptstream: error: %s\n", error.message.c_str());
  return exit_code_for(error);
}

namespace {

struct AllArgs {
  InspectArgs inspect;
  ConvertArgs convert;
  MergeArgs merge;
  PlanArgs plan;
  TestArgs test;
  VerifyArgs verify;
  FinalizeArgs finalize;
};

int dispatch(CLI::App& app, AllArgs& args) {
  if (app.got_subcommand("inspect")) return run_inspect(args.inspect);
  if (app.got_subcommand("convert")) return run_convert(args.convert);
  if (app.got_subcommand("merge")) return run_merge(args.merge);
  if (app.got_subcommand("plan")) return run_plan(args.plan);
  if (app.got_subcommand("test")) return run_test(args.test);
  if (app.got_subcommand("verify")) return run_verify(args.verify);
  if (app.got_subcommand("finalize")) return run_finalize(args.finalize);
  return kExitUsage;
}

// Whatever a command throws (a library's std::filesystem_error, std::bad_alloc) ends as an error
// with its exit code, never as an abort: the objects unwound on the way remove what the command
// had written.
int run_guarded(CLI::App& app, AllArgs& args) {
  try {
    return dispatch(app, args);
  } catch (const std::filesystem::filesystem_error& e) {
    std::string paths = e.path1().empty() ? "" : e.path1().string();
    if (!e.path2().empty()) paths += (paths.empty() ? "" : ", ") + e.path2().string();
    return report_error(io_error((paths.empty() ? "" : paths + ": ") + e.code().message()));
  } catch (const std::bad_alloc&) {
    return report_error(io_error("out of memory"));
  } catch (const std::exception& e) {
    return report_error(io_error(std::string("unexpected failure: ") + e.what()));
  } catch (...) {
    return report_error(io_error("unexpected failure"));
  }
}

}  // namespace
}  // namespace ckptstream::cli

int main(int argc, char** argv) {
  using namespace ckptstream::cli;
  SignalWatcher signals;  // before any thread starts
  CLI::App app{
      "ckptstream: turns sharded training checkpoints into Hugging Face safetensors, streaming "
      "bytes with small, flat memory.\nExit codes: 0 ok, 1 verification found a difference, "
      "2 usage error, 3 bad or unsupported input, 4 I/O error, 128 + N stopped by signal N "
      "(130 SIGINT, 143 SIGTERM, 129 SIGHUP)."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ckptstream 0.1.0");

  AllArgs args;
  add_inspect(app, args.inspect);
  add_convert(app, args.convert);
  add_merge(app, args.merge);
  add_plan(app, args.plan);
  add_test(app, args.test);
  add_verify(app, args.verify);
  add_finalize(app, args.finalize);
  for (auto* checkpoint : {&args.merge.checkpoint, &args.plan.checkpoint, &args.test.checkpoint,
                           &args.verify.checkpoint, &args.finalize.checkpoint})
    checkpoint->conversion.interrupt = signals.flag();
  args.convert.interrupt = signals.flag();
  args.inspect.interrupt = signals.flag();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  int code = run_guarded(app, args);
  if (int sig = signals.signal(); sig != 0) {
    if (code == kExitOk) {
      std::fprintf(stderr, "ckptstream: %s arrived after the work was complete\n",
                   signal_name(sig));
    } else {
      code = 128 + sig;
    }
  }
  return code;
}
