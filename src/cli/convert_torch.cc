// `ckptstream convert --to torch`: the state dict of torch files, a DCP or a verl FSDP
// checkpoint, written as one torch.save file (the job of torch's dcp_to_torch_save and RLinf's
// convert_dcp_to_pt), streamed through the native writer.
#include <cstdio>
#include <unordered_map>

#include "cli/commands.h"
#include "cli/progress.h"
#include "exec/executor.h"
#include "pipeline/merge_plan.h"
#include "torch/torch_writer.h"

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

Status write_torch_file(const MergePlan& merge, const fs::path& target, ProgressBar& bar,
                        const InterruptFlag* interrupt) {
  std::unordered_map<std::string_view, const PlacedTensor*> placed;
  for (const auto& file : merge.model.files)
    for (const auto& tensor : file.tensors) placed[tensor.tensor.name] = &tensor;
  std::vector<TorchWriteTensor> tensors;
  std::unordered_map<std::string_view, std::size_t> index;
  for (const auto& name : merge.tensor_order) {
    const LogicalTensor& t = placed.at(name)->tensor;
    index[name] = tensors.size();
    tensors.push_back(TorchWriteTensor{{t.name}, t.dtype, t.shape});
  }
  TorchWriteOptions options;
  CKPT_ASSIGN_OR_RETURN(options.prefix, torch_archive_name(target));
  CKPT_ASSIGN_OR_RETURN(auto layout, plan_torch_zip(tensors, options));
  CKPT_ASSIGN_OR_RETURN(auto writer, TorchZipWriter::create(target, std::move(layout)));
  ExecOptions exec;
  exec.interrupt = interrupt;
  exec.on_progress = [&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };
  CKPT_TRY(stream_plan(merge.model, exec,
                       [&](const OutputFile&, const PlacedTensor& tensor, std::uint64_t offset,
                           std::span<const std::byte> bytes) {
                         return writer.write_tensor_bytes(index.at(tensor.tensor.name), offset,
                                                          bytes);
                       }));
  return writer.finish();
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
  ProgressBar bar("convert", args.quiet);
  auto written = write_torch_file(*merge, target, bar, args.interrupt);
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
