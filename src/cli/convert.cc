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
      "convert",
      "Convert torch.save files (.pt/.bin, HF sharded .bin) or a safetensors model to safetensors "
      "(FP8 block-quantized weights dequantized); --to torch: one torch.save file; --to "
      "megatron: a Hugging Face model to a Megatron-Core checkpoint");
  cmd->add_option("sources", args.sources,
                  "torch.save files, a *.bin.index.json, or directories holding them; --to "
                  "megatron: a Hugging Face model directory");
  cmd->add_option("--target_dir,--target-dir,-o", args.target_dir, "output directory");
  cmd->add_option("--to", args.to,
                  "safetensors (a Hugging Face model directory), or torch: one torch.save file of "
                  "the state dict as saved (what dcp_to_torch_save makes), from torch files, a "
                  "DCP or a verl FSDP checkpoint directory")
      ->check(CLI::IsMember({"safetensors", "torch", "megatron"}))
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
  auto& m = args.megatron;
  const std::string group = "--to megatron (a Hugging Face model to a Megatron-Core checkpoint)";
  cmd->add_option("--tp,--tensor-model-parallel-size", m.tp, "tensor parallel size")
      ->group(group)
      ->capture_default_str();
  cmd->add_option("--pp,--pipeline-model-parallel-size", m.pp, "pipeline parallel size")
      ->group(group)
      ->capture_default_str();
  cmd->add_option("--vpp,--virtual-pipeline-model-parallel-size", m.vpp,
                  "virtual pipeline chunks per stage")
      ->group(group)
      ->capture_default_str();
  cmd->add_option("--ep,--expert-model-parallel-size", m.ep, "expert parallel size")
      ->group(group)
      ->capture_default_str();
  cmd->add_option("--etp,--expert-tensor-parallel-size", m.etp,
                  "expert tensor parallel size (default 1, as megatron-core)")
      ->group(group);
  cmd->add_option("--first-stage-layers,--decoder-first-pipeline-num-layers", m.first_stage_layers,
                  "uneven pipeline: layers of the first stage")
      ->group(group);
  cmd->add_option("--last-stage-layers,--decoder-last-pipeline-num-layers", m.last_stage_layers,
                  "uneven pipeline: layers of the last stage")
      ->group(group);
  cmd->add_option("--layer-spec,--layer_spec", m.layer_spec,
                  "te (Transformer Engine, what GPU training builds) or local")
      ->group(group)
      ->check(CLI::IsMember({"te", "transformer_engine", "local"}))
      ->capture_default_str();
  cmd->add_option("--format,--ckpt-format", m.format, "torch_dist or torch (legacy)")
      ->group(group)
      ->check(CLI::IsMember({"torch_dist", "torch"}))
      ->capture_default_str();
  cmd->add_option("--layout", m.layout,
                  "megatron-lm (latest_checkpointed_iteration.txt + release/) or flat (the "
                  "checkpoint files in the target, as verl's dist_checkpointing_path)")
      ->group(group)
      ->check(CLI::IsMember({"megatron-lm", "flat"}))
      ->capture_default_str();
  cmd->add_option("--make-vocab-size-divisible-by,--make_vocab_size_divisible_by", m.vocab_divisor,
                  "pad the vocabulary to a multiple of this x TP")
      ->group(group)
      ->capture_default_str();
  cmd->add_option("--hf_model_path,--hf-model-path", args.hf_model_path,
                  "verl's converter spelling of the source model directory")
      ->group(group);
  cmd->add_option("--output_path,--output-path", args.output_path,
                  "verl's converter spelling of --target_dir")
      ->group(group);
  cmd->add_flag("--dry-run,--dry_run", args.dry_run,
                "print what would be written (files, tensor pieces, bytes), write nothing")
      ->group(group);
  cmd->add_flag("--json", args.json, "--dry-run as JSON (schema ckptstream.plan/1)")->group(group);
  cmd->add_flag("--use_cpu_initialization,--use-cpu-initialization", args.use_cpu_initialization,
                "accepted for verl's converter; nothing runs on a GPU")
      ->group(group);
}

int run_convert_to_megatron(const ConvertArgs& args) {
  std::vector<fs::path> sources = args.sources;
  if (!args.hf_model_path.empty()) sources.insert(sources.begin(), args.hf_model_path);
  if (sources.size() != 1)
    return report_error(usage_error("--to megatron takes one Hugging Face model directory"));
  fs::path target = !args.output_path.empty() ? args.output_path : args.target_dir;
  if (target.empty() && !args.dry_run)
    return report_error(usage_error("--target_dir (or --output_path) is required"));
  MegatronOptions megatron = args.megatron;
  megatron.dtype = args.dtype;
  auto plan = plan_megatron_checkpoint(sources.front(), megatron);
  if (!plan.ok()) return report_error(plan.error());
  if (!args.quiet) {
    std::fprintf(stderr, "found: %s\n", plan->layout().c_str());
    for (const auto& note : plan->notes()) std::fprintf(stderr, "note: %s\n", note.c_str());
  }
  if (args.dry_run) {
    auto sink = [](std::string_view text) { std::fwrite(text.data(), 1, text.size(), stdout); };
    if (args.json)
      plan->write_json(sink, false);
    else
      plan->write_text(sink, false);
    return kExitOk;
  }
  ProgressBar bar("convert", args.quiet);
  WriteOptions options = write_options(args.dist, args.overwrite, args.quiet, "convert",
                                       args.threads, args.interrupt, bar);
  auto complete = write_model(*plan, target, options);
  bar.finish();
  if (!complete.ok()) return report_error(complete.error());
  if (!*complete) return kExitOk;
  if (!args.quiet)
    std::printf("wrote %zu tensor pieces (%s) in %zu file%s to %s\n", plan->tensor_count(),
                human_bytes(plan->tensor_bytes()).c_str(), plan->file_count(),
                plan->file_count() == 1 ? "" : "s", target.c_str());
  return kExitOk;
}

int run_convert(const ConvertArgs& args) {
  if (args.to == "megatron") return run_convert_to_megatron(args);
  if (args.sources.empty()) return report_error(usage_error("convert needs SOURCES"));
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
