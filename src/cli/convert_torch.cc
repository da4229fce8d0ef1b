// `ckptstream convert --to torch`: the state dict of torch files, a DCP or a verl FSDP
// checkpoint, written as one torch.save file (the job of torch's dcp_to_torch_save and RLinf's
// convert_dcp_to_pt), streamed through the native writer.
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"
#include "plan/report.h"

namespace ckptstream::cli {
namespace fs = std::filesystem;

int run_convert_to_torch(const ConvertArgs& args) {
  fs::path target = args.target_file;
  if (target.empty()) {
    if (args.target_dir.empty())
      return report_error(usage_error("--to torch needs --target-file FILE or --target_dir DIR"));
    target = args.target_dir / "model.pt";
  }
  ConversionOptions conversion;
  conversion.dtype = args.dtype;
  conversion.as_saved = true;
  if (!args.prefix.empty()) conversion.prefix = args.prefix;
  conversion.threads = args.threads;
  conversion.interrupt = args.interrupt;
  auto writable = check_torch_target(target, args.overwrite);  // before any reading
  if (!writable.ok()) return report_error(writable.error());
  auto plan = plan_torch_files(args.sources, conversion);
  if (!plan.ok()) return report_error(plan.error());
  if (!args.quiet) {
    std::fprintf(stderr, "found: %s\n", plan->layout().c_str());
    for (const auto& note : plan->notes()) std::fprintf(stderr, "note: %s\n", note.c_str());
  }
  ProgressBar bar("convert", args.quiet);
  DistArgs single;
  single.dist = "none";
  WriteOptions options = write_options(single, args.overwrite, args.quiet, "convert", args.threads,
                                       args.interrupt, bar);
  auto written = write_torch_file(*plan, target, options);
  bar.finish();
  if (!written.ok()) return report_error(written.error());
  if (!args.quiet)
    std::printf("wrote %zu tensors (%s) to %s\n", plan->tensor_count(),
                human_bytes(plan->tensor_bytes()).c_str(), target.c_str());
  return kExitOk;
}

}  // namespace ckptstream::cli
