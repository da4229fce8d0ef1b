#include "pipeline/merge_plan.h"

#include "formats/hf_safetensors.h"
#include "mapping/fp8_blocks.h"

#include <cstdio>
#include <unordered_map>

#include "formats/hf_safetensors.h"
#include "formats/torch_sources.h"
#include "io/input_file.h"
#include "mapping/experts.h"
#include "mapping/lora.h"
#include "mapping/megatron_hf.h"
#include "torch/torch_writer.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

// The --dtype choice; the state dict as saved keeps its dtypes unless one is asked for.
Result<DTypeChoice> output_dtype_choice(const ConversionOptions& options) {
  CKPT_ASSIGN_OR_RETURN(DTypeChoice choice, parse_dtype_choice(options.dtype));
  if (options.as_saved && choice == DTypeChoice::kAuto) return DTypeChoice::kKeep;
  return choice;
}

// Options that no plan can satisfy, refused before anything is read.
Status check_options(const ConversionOptions& options) {
  CKPT_TRY(parse_dtype_choice(options.dtype));
  if (options.max_shard_size == 0) return usage_error("the largest output file must hold a byte");
  if (options.lora != "fuse" && options.lora != "adapter")
    return usage_error("--lora must be fuse or adapter (got '" + options.lora + "')");
  return {};
}

bool is_lm_head(const std::string& name) {
  return name == "lm_head.weight" ||
         (name.size() > 15 && name.compare(name.size() - 15, 15, ".lm_head.weight") == 0);
}

// transformers' save_pretrained does not write the output projection of a tied model.
void drop_tied_output(const ConversionOptions& options, const std::optional<HfConfig>& config,
                      std::vector<LogicalTensor>& tensors, std::vector<std::string>& notes) {
  std::string why;
  if (options.tie_word_embedding)
    why = "--tie-word-embedding";
  else if (config && config->tie_word_embeddings.value_or(false))
    why = "config.json says tie_word_embeddings";
  else
    return;
  auto before = tensors.size();
  std::erase_if(tensors, [](const LogicalTensor& t) { return is_lm_head(t.name); });
  if (tensors.size() != before) notes.push_back("lm_head.weight not written: " + why);
}

// LoRA checkpoints: fuses the adapters into the weights, or splits them off as a PEFT adapter
// (returned; `tensors` becomes the base model).
Result<std::optional<LoraExport>> apply_lora(const fs::path& local_dir,
                                             const ConversionOptions& options,
                                             const std::optional<HfConfig>& config,
                                             MergePlan& merge,
                                             std::vector<LogicalTensor>& tensors) {
  if (!has_lora_keys(tensors)) return std::optional<LoraExport>();
  LoraFlags flags{options.lora_alpha, options.lora_rank,
                  options.use_rslora ? std::optional<bool>(true) : std::nullopt};
  CKPT_ASSIGN_OR_RETURN(auto lora, find_lora_params(local_dir, flags));
  char alpha[32];
  std::snprintf(alpha, sizeof alpha, "%g", lora.alpha);
  auto describe = std::string("alpha ") + alpha + " from " + lora.alpha_source +
                  (lora.use_rslora ? ", rsLoRA" : "");
  if (options.lora != "adapter") {
    CKPT_ASSIGN_OR_RETURN(tensors, fuse_lora(tensors, lora));
    merge.notes.push_back("LoRA fused into the weights (" + describe + ")");
    return std::optional<LoraExport>();
  }
  std::optional<std::string> base_name;
  if (config && !config->name_or_path.empty()) base_name = config->name_or_path;
  CKPT_ASSIGN_OR_RETURN(auto adapter, export_lora_adapter(tensors, lora, base_name));
  tensors = std::move(adapter.base);
  merge.notes.push_back("LoRA written as a PEFT adapter in lora_adapter/ (" + describe + ")");
  return std::optional<LoraExport>(std::move(adapter));
}

// The model's config.json and side files: from --hf-config, else beside the checkpoint.
Result<std::optional<HfConfig>> find_model_files(const std::optional<fs::path>& hf_dir,
                                                 MergePlan& merge) {
  if (!hf_dir) return std::optional<HfConfig>();
  CKPT_ASSIGN_OR_RETURN(merge.model.side_files, find_side_files(*hf_dir));
  CKPT_ASSIGN_OR_RETURN(bool has_config, regular_file_exists(*hf_dir / "config.json"));
  if (!has_config) return std::optional<HfConfig>();
  merge.config_json = *hf_dir / "config.json";
  CKPT_ASSIGN_OR_RETURN(auto config, read_hf_config(*merge.config_json));
  return std::optional<HfConfig>(std::move(config));
}

Result<std::optional<HfConfig>> read_config_if_any(const std::optional<fs::path>& config_json) {
  if (!config_json) return std::optional<HfConfig>();
  CKPT_ASSIGN_OR_RETURN(auto config, read_hf_config(*config_json));
  return std::optional<HfConfig>(std::move(config));
}

// The plan of the checkpoint `found` in `local_dir`.
Result<MergePlan> plan_found(const FoundCheckpoint& found, const fs::path& local_dir,
                             const ConversionOptions& options) {
  MergePlan merge;
  merge.scratch = std::make_shared<ScratchDir>();
  ReadOptions read;
  read.threads = options.threads;
  read.sampled_headers = options.sampled_headers;
  read.prefix = options.prefix;
  read.hf_config = options.hf_config;
  read.iteration = options.iteration;
  read.scratch_dir = merge.scratch->path();
  read.accept_renamed_rank_files = options.accept_renamed_rank_files;
  read.interrupt = options.interrupt;
  CKPT_ASSIGN_OR_RETURN(SourceModel source, found.read(read));
  if (options.hf_config) {
    CKPT_ASSIGN_OR_RETURN(bool found_config,
                          regular_file_exists(*options.hf_config / "config.json"));
    if (!found_config)
      return usage_error("--hf-config " + options.hf_config->string() + ": no config.json there");
    source.hf_dir = options.hf_config;
  }
  merge.layout = source.layout;
  merge.notes = std::move(source.notes);
  merge.notes.insert(merge.notes.end(), source.tensors.notes.begin(), source.tensors.notes.end());

  CKPT_ASSIGN_OR_RETURN(auto config, find_model_files(source.hf_dir, merge));
  if (!merge.config_json && !options.as_saved && found.reader->needs_hf_config)
    return usage_error(local_dir.string() +
                       ": no config.json found beside the checkpoint; name the model's "
                       "Hugging Face directory (its config and tokenizer) with --hf-config DIR");
  if (!merge.config_json && !options.as_saved)
    merge.notes.push_back("no huggingface/config.json: the output has no config");

  // As saved (convert --to torch): megatron-core's own names, each tensor whole.
  if (source.naming == SourceModel::Naming::kMegatron && !options.as_saved) {
    if (!config)
      return usage_error(local_dir.string() +
                         ": megatron-core names become Hugging Face names by the model's "
                         "config.json; name its directory with --hf-config DIR");
    MegatronMapOptions map;
    map.value_model = options.value_model;
    map.packed_experts = options.keep_packed_experts;
    if (options.vit_dir) {
      CKPT_ASSIGN_OR_RETURN(map.vision_weights, read_hf_source_tensors(*options.vit_dir));
    }
    CKPT_ASSIGN_OR_RETURN(source.tensors,
                          map_megatron_to_hf(std::move(source.tensors), *config, map));
    for (auto& note : source.tensors.notes) merge.notes.push_back(std::move(note));
  }
  auto tensors = std::move(source.tensors.tensors);
  std::optional<LoraExport> adapter;
  if (!options.as_saved) {
    CKPT_ASSIGN_OR_RETURN(adapter, apply_lora(local_dir, options, config, merge, tensors));
    drop_tied_output(options, config, tensors, merge.notes);
    if (!options.keep_packed_experts && config) {
      CKPT_ASSIGN_OR_RETURN(tensors,
                            unpack_packed_experts(std::move(tensors), *config, merge.notes));
    }
  }

  CKPT_ASSIGN_OR_RETURN(auto dtype, output_dtype_choice(options));
  CKPT_ASSIGN_OR_RETURN(auto float_dtype, resolve_float_dtype(dtype, config));
  set_output_dtypes(tensors, float_dtype);
  if (tensors.empty())
    return invalid_input(local_dir.string() + ": the checkpoint holds no tensor");

  for (const auto& t : tensors) merge.tensor_order.push_back(t.name);
  merge.model.inputs = source.tensors.inputs;
  CKPT_TRY(safetensors::plan_output(
      std::move(tensors), {options.as_saved ? safetensors::kOneFile : options.max_shard_size},
      merge.model));
  if (adapter) {
    Plan plan;
    plan.inputs = source.tensors.inputs;
    set_output_dtypes(adapter->adapter, float_dtype);
    // PEFT loads one adapter_model.safetensors, never shards.
    CKPT_TRY(safetensors::plan_output(std::move(adapter->adapter), {safetensors::kOneFile}, plan));
    plan.files.at(0).name = "adapter_model.safetensors";
    plan.text_files.push_back(TextFile{"adapter_config.json", adapter->adapter_config_json});
    merge.adapter = std::move(plan);
  }
  return merge;
}

}  // namespace

Result<MergePlan> plan_merge(const fs::path& local_dir, const ConversionOptions& options) {
  CKPT_TRY(check_options(options));
  CKPT_ASSIGN_OR_RETURN(FoundCheckpoint found, find_checkpoint(local_dir, options.backend));
  return plan_found(found, local_dir, options);
}

namespace {

// A Hugging Face safetensors model directory converted to another (resharded, cast to another
// dtype, block-quantized FP8 weights dequantized unless --dtype keep; then config.json loses
// its quantization_config).
Result<MergePlan> plan_safetensors_convert(const fs::path& dir, const ConversionOptions& options) {
  CKPT_ASSIGN_OR_RETURN(SourceTensors source, read_hf_source_tensors(dir));
  CKPT_ASSIGN_OR_RETURN(bool has_config, regular_file_exists(dir / "config.json"));
  std::optional<fs::path> config_json;
  if (has_config) config_json = dir / "config.json";
  CKPT_ASSIGN_OR_RETURN(auto config, read_config_if_any(config_json));
  CKPT_ASSIGN_OR_RETURN(auto dtype, output_dtype_choice(options));
  CKPT_ASSIGN_OR_RETURN(auto float_dtype, resolve_float_dtype(dtype, config));
  CKPT_ASSIGN_OR_RETURN(std::size_t quantized, count_block_fp8(source));
  MergePlan merge;
  merge.layout = "Hugging Face safetensors model in " + dir.string();
  CKPT_ASSIGN_OR_RETURN(merge.model.side_files, find_side_files(dir));
  if (quantized && float_dtype) {
    if (!config) return invalid_input(dir.string() + ": FP8 weights but no config.json");
    CKPT_TRY(dequantize_block_fp8(source, *config));
    CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(dir / "config.json"));
    CKPT_ASSIGN_OR_RETURN(std::string without, config_text_without(text, "quantization_config"));
    std::erase_if(merge.model.side_files,
                  [](const SideFile& f) { return f.name == "config.json"; });
    merge.model.text_files.push_back({"config.json", std::move(without)});
    merge.notes.push_back(
        "config.json written without its quantization_config (the weights "
        "are dequantized)");
  } else if (quantized) {
    merge.notes.push_back(std::to_string(quantized) +
                          " block-quantized float8_e4m3fn weights and their scales kept as they "
                          "are (--dtype keep)");
  }
  set_output_dtypes(source.tensors, float_dtype);
  merge.notes.insert(merge.notes.end(), source.notes.begin(), source.notes.end());
  merge.config_json = config_json;
  for (const auto& t : source.tensors) merge.tensor_order.push_back(t.name);
  merge.model.inputs = std::move(source.inputs);
  CKPT_TRY(
      safetensors::plan_output(std::move(source.tensors), {options.max_shard_size}, merge.model));
  return merge;
}

}  // namespace

Result<MergePlan> plan_convert(const std::vector<fs::path>& sources,
                               const ConversionOptions& options) {
  CKPT_TRY(check_options(options));
  std::error_code ec;
  if (!options.as_saved && sources.size() == 1 && is_safetensors_model_dir(sources.front()))
    return plan_safetensors_convert(sources.front(), options);
  if (options.as_saved && sources.size() == 1 && fs::is_directory(sources.front(), ec)) {
    CKPT_ASSIGN_OR_RETURN(auto found, detect_checkpoint(sources.front()));
    if (found) return plan_found(found, sources.front(), options);
  }
  CKPT_ASSIGN_OR_RETURN(auto set, find_torch_sources(sources));
  MergePlan merge;
  // The state dict as saved keeps its dtypes unless one is asked for; a model takes its config's.
  std::optional<HfConfig> config;
  if (!options.as_saved) {
    CKPT_ASSIGN_OR_RETURN(config, read_config_if_any(set.config_json));
  }
  CKPT_ASSIGN_OR_RETURN(auto dtype, output_dtype_choice(options));
  CKPT_ASSIGN_OR_RETURN(auto float_dtype, resolve_float_dtype(dtype, config));
  CKPT_ASSIGN_OR_RETURN(auto conversion, plan_torch_conversion(set, float_dtype));
  if (conversion.tensors.empty())  // an empty file helps nobody
    return invalid_input("no tensor found in " + set.files.front().string());
  merge.layout = std::to_string(set.files.size()) + " torch.save file(s)";
  merge.notes = set.notes;
  for (const auto& alias : conversion.dropped_aliases)
    merge.notes.push_back("not written: " + alias);
  merge.config_json = set.config_json;
  for (const auto& t : conversion.tensors) merge.tensor_order.push_back(t.name);
  merge.model.inputs = conversion.inputs;
  if (!options.as_saved) merge.model.side_files = std::move(set.side_files);
  CKPT_TRY(safetensors::plan_output(
      std::move(conversion.tensors),
      {options.as_saved ? safetensors::kOneFile : options.max_shard_size}, merge.model));
  return merge;
}

Result<Plan> plan_torch_save(const MergePlan& merge, const fs::path& target) {
  std::unordered_map<std::string_view, const LogicalTensor*> by_name;
  for (const auto& file : merge.model.files)
    for (const auto& placed : file.tensors) by_name[placed.tensor.name] = &placed.tensor;
  std::vector<TorchWriteTensor> entries;
  std::vector<LogicalTensor> tensors;
  for (const auto& name : merge.tensor_order) {
    const LogicalTensor& t = *by_name.at(name);
    entries.push_back(TorchWriteTensor{{t.name}, t.dtype, t.shape});
    tensors.push_back(t);
  }
  TorchWriteOptions options;
  CKPT_ASSIGN_OR_RETURN(options.prefix, torch_archive_name(target));
  CKPT_ASSIGN_OR_RETURN(auto layout, plan_torch_zip(entries, options));
  Plan plan;
  plan.inputs = merge.model.inputs;
  plan.total_size = merge.model.total_size;
  CKPT_ASSIGN_OR_RETURN(auto file, torch_zip_output_file(target.filename().string(),
                                                         std::move(layout), std::move(tensors)));
  plan.files.push_back(std::move(file));
  return plan;
}

}  // namespace ckptstream
