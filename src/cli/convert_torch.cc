// `ckptstream convert --to torch`: the state dict of torch files, a DCP or a verl FSDP
// checkpoint, written as one torch.save file (the job of torch's dcp_to_torch_save and RLinf's
// convert_dcp_to_pt), streamed through the native writer.
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"
#include "exec/executor.h"
#include "pipeline/merge_plan.h"

namespace ckptstream::cli {
namespace fs = std::filesystem;
namespace {

Result<MergePlan> plan_state_dict(const ConvertArgs& args) {
  MergeOptions options;
  CKPT_ASSIGN_OR_RETURN(options.dtype, parse_dtype_choice(args.dtype));
  // `auto` keeps the saved dtypes here: the output is the state dict as saved.
  if (options.dtype == DTypeChoice::kAuto) options.dtype = DTypeChoice::kKeep;
  options.raw_state_dict = true;
  if (!args.prefix.empty()) options.prefix = args.prefix;
  options.threads = args.threads;
  options.interrupt = args.interrupt;
  return plan_convert(args.sources, options);
}

}  // namespace

int run_convert_to_torch(const ConvertArgs& args) {
  fs::path target = args.target_file;
  if (target.empty()) {
    if (args.target_dir.empty())
      return report_error(usage_error("--to torch needs --target-file FILE or --target_dir DIR"));
    target = args.target_dir / "model.pt";
  }
  std::error_code ec;
  auto status = fs::symlink_status(target, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    return report_error(io_error(target.string() + ": " + ec.message()));
  if (fs::exists(status)) {
    if (fs::is_directory(fs::status(target, ec)))
      return report_error(usage_error(target.string() + " is a directory; name a file"));
    if (!args.overwrite)
      return report_error(usage_error(target.string() + " exists; pass --overwrite to replace it"));
  }
  auto merge = plan_state_dict(args);
  if (!merge.ok()) return report_error(merge.error());
  if (!args.quiet) {
    std::fprintf(stderr, "found: %s\n", merge->layout.c_str());
    for (const auto& note : merge->notes) std::fprintf(stderr, "note: %s\n", note.c_str());
  }
  if (!target.parent_path().empty()) fs::create_directories(target.parent_path(), ec);
  for (const auto& stale : remove_stale_temp_files(target))
    if (!args.quiet)
      std::fprintf(stderr, "note: removed %s, left by an interrupted run\n", stale.c_str());
  auto plan = plan_torch_save(*merge, target);
  if (!plan.ok()) return report_error(plan.error());
  ProgressBar bar("convert", args.quiet);
  ExecOptions exec;
  exec.threads = args.threads;
  exec.interrupt = args.interrupt;
  exec.on_progress = [&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };
  auto written = execute_to_file(*plan, target, exec);
  bar.finish();
  if (!written.ok() && written.error().kind == ErrorKind::kInterrupted)
    return report_error(
        interrupted_error(target.string() + " was not written (its temporary file was removed)"));
  if (!written.ok()) return report_error(written.error());
  if (!args.quiet)
    std::printf("wrote %zu tensors (%s) to %s\n", merge->tensor_order.size(),
                human_bytes(merge->model.total_size).c_str(), target.c_str());
  return kExitOk;
}

}  // namespace ckptstream::cli
