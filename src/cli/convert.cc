// `ckptstream convert SRC... --target_dir OUT`: torch.save files (plain, legacy, Hugging Face's
// sharded pytorch_model-*.bin) to safetensors, with side files and a checksum manifest.
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"
#include "plan/report.h"
#include "safetensors/safetensors.h"

namespace ckptstream::cli {
namespace fs = std::filesystem;
void add_convert(CLI::App& app, ConvertArgs& args) {
  auto* cmd = app.add_subcommand(
      "convert", "Convert torch.save files (.pt/.bin, HF sharded .bin) to safetensors");
  cmd->add_option("sources", args.sources,
                  "torch.save files, a *.bin.index.json, or directories holding them")
      ->required();
  cmd->add_option("--target_dir,--target-dir,-o", args.target_dir, "output directory");
  cmd->add_option("--to", args.to,
                  "safetensors (a Hugging Face model directory), or torch: one torch.save file of "
                  "the state dict as saved (what dcp_to_torch_save makes), from torch files, a "
                  "DCP or a verl FSDP checkpoint directory")
      ->check(CLI::IsMember({"safetensors", "torch"}))
      ->capture_default_str();
  cmd->add_option("--target-file,--target_file", args.target_file,
                  "--to torch: the file to write (default: TARGET_DIR/model.pt)");
  cmd->add_option("--prefix", args.prefix,
                  "--to torch from DCP: the app-state prefix of the model keys; detected when "
                  "absent");
  cmd->add_option("--dtype", args.dtype,
                  "auto (config.json's torch_dtype, else keep), keep, bf16, fp16, fp32; "
                  "only floating-point tensors are cast")
      ->capture_default_str();
  cmd->add_option("--max-shard-size,--max_shard_size", args.max_shard_size,
                  "largest output file: 5GB (decimal units), 2GiB (binary), or bytes")
      ->capture_default_str();
  cmd->add_flag("--overwrite", args.overwrite, "replace a model already in the target directory");
  cmd->add_option("--threads", args.threads,
                  "output files written at once, one thread each (0: one per core)")
      ->capture_default_str();
  add_dist_options(*cmd, args.dist);
  cmd->add_flag("--quiet,-q", args.quiet, "no progress or summary");
}

int run_convert(const ConvertArgs& args) {
  if (args.to == "torch") return run_convert_to_torch(args);
  if (args.target_dir.empty()) return report_error(usage_error("--target_dir is required"));
  ConversionOptions conversion;
  conversion.dtype = args.dtype;
  auto max_shard = safetensors::parse_max_shard_size(args.max_shard_size);
  if (!max_shard.ok()) return report_error(max_shard.error());
  conversion.max_shard_size = *max_shard;
  conversion.threads = args.threads;
  conversion.interrupt = args.interrupt;
  auto plan = plan_torch_files(args.sources, conversion);
  if (!plan.ok()) return report_error(plan.error());

  ProgressBar bar("convert", args.quiet);
  WriteOptions options = write_options(args.dist, args.overwrite, args.quiet, "convert",
                                       args.threads, args.interrupt, bar);
  auto complete = write_model(*plan, args.target_dir, options);
  bar.finish();
  if (!complete.ok()) return report_error(complete.error());
  if (!*complete) return kExitOk;  // another rank of a distributed run: rank 0 finishes

  if (!args.quiet) {
    for (const auto& note : plan->notes()) std::fprintf(stderr, "note: %s\n", note.c_str());
    std::printf("wrote %zu tensors (%s) in %zu file%s to %s\n", plan->tensor_count(),
                human_bytes(plan->tensor_bytes()).c_str(), plan->file_count(),
                plan->file_count() == 1 ? "" : "s", args.target_dir.c_str());
  }
  return kExitOk;
}

}  // namespace ckptstream::cli
