#include "formats/merge_plan.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "formats/dcp_checkpoint.h"
#include "formats/verl_fsdp.h"
#include "io/input_file.h"
#include "mapping/experts.h"
#include "mapping/hf_config.h"
#include "mapping/lora.h"
#include "safetensors/safetensors.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

struct SourceModel {
  std::string layout;
  std::vector<fs::path> inputs;
  std::vector<LogicalTensor> tensors;
  std::optional<fs::path> hf_dir;
  std::vector<std::string> notes;
};

Result<SourceModel> read_fsdp(const fs::path& dir, const MergeOptions& options) {
  CKPT_ASSIGN_OR_RETURN(auto checkpoint, find_fsdp_checkpoint(dir));
  checkpoint.accept_renamed_rank_files = options.accept_renamed_rank_files;
  CKPT_ASSIGN_OR_RETURN(auto merged, merge_fsdp_tensors(checkpoint, options.threads,
                                                        TorchReadOptions{options.sampled_headers},
                                                        options.interrupt));
  SourceModel model;
  model.layout = "verl FSDP checkpoint, world size " + std::to_string(checkpoint.world_size);
  model.inputs = std::move(merged.inputs);
  model.tensors = std::move(merged.tensors);
  model.hf_dir = checkpoint.hf_dir;
  model.notes = std::move(checkpoint.notes);
  model.notes.insert(model.notes.end(), merged.notes.begin(), merged.notes.end());
  return model;
}

// The Hugging Face side of a DCP checkpoint: config.json beside it, in huggingface/ beside it,
// or next to its parent (RLinf keeps the base model elsewhere: --hf-config). A config.json that
// is there but is no regular file (a directory, a FIFO) is an error, not a missing config.
Result<std::optional<fs::path>> find_hf_dir_near(const fs::path& dir) {
  for (const fs::path& candidate : {dir, dir / "huggingface", dir.parent_path() / "huggingface"}) {
    CKPT_ASSIGN_OR_RETURN(bool found, regular_file_exists(candidate / "config.json"));
    if (found) return std::optional<fs::path>(candidate);
  }
  return std::optional<fs::path>();
}

// The directory can be listed (else detection would see an empty one and say nothing is there).
Status check_listable(const fs::path& dir) {
  std::error_code ec;
  auto status = fs::status(dir, ec);
  if (ec) return io_error(dir.string() + ": " + ec.message());
  if (!fs::is_directory(status)) return invalid_input(dir.string() + ": not a directory");
  fs::directory_iterator list(dir, ec);
  if (ec) return io_error(dir.string() + ": cannot list: " + ec.message());
  return {};
}

Result<SourceModel> read_dcp(const fs::path& dir, const MergeOptions& options,
                             const ScratchDir& scratch) {
  CKPT_ASSIGN_OR_RETURN(auto layout, find_dcp_checkpoint(dir));
  CKPT_ASSIGN_OR_RETURN(
      auto merged, read_dcp_tensors(dir, DcpOptions{options.prefix, scratch.path(), options.threads,
                                                    options.interrupt}));
  SourceModel model;
  model.layout = layout.dcp_dir
                     ? "torch.distributed.checkpoint (DCP) in " + layout.dcp_dir->string()
                     : "RLinf full weights " + layout.full_weights->string();
  model.inputs = std::move(merged.inputs);
  model.tensors = std::move(merged.tensors);
  CKPT_ASSIGN_OR_RETURN(model.hf_dir, find_hf_dir_near(layout.dcp_dir ? *layout.dcp_dir : dir));
  model.notes = std::move(layout.notes);
  model.notes.insert(model.notes.end(), merged.notes.begin(), merged.notes.end());
  return model;
}

Result<SourceModel> read_source(const fs::path& dir, const MergeOptions& options,
                                const ScratchDir& scratch) {
  CKPT_TRY(check_listable(dir));
  Backend backend = options.backend;
  if (backend == Backend::kAuto) {
    if (looks_like_fsdp_checkpoint(dir))
      backend = Backend::kFsdp;
    else if (looks_like_dcp_checkpoint(dir))
      backend = Backend::kDcp;
    else
      return invalid_input(dir.string() +
                           ": no supported checkpoint found (looked for verl FSDP "
                           "model_world_size_W_rank_R.pt files, a DCP .metadata, RLinf's "
                           "dcp_checkpoint/ or model_state_dict/full_weights.pt)");
  }
  if (backend == Backend::kDcp) return read_dcp(dir, options, scratch);
  return read_fsdp(dir, options);
}

bool is_lm_head(const std::string& name) {
  return name == "lm_head.weight" ||
         (name.size() > 15 && name.compare(name.size() - 15, 15, ".lm_head.weight") == 0);
}

// transformers' save_pretrained does not write the output projection of a tied model.
void drop_tied_output(const MergeOptions& options, const std::optional<HfConfig>& config,
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
Result<std::optional<LoraExport>> apply_lora(const fs::path& local_dir, const MergeOptions& options,
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
  if (options.lora == LoraMode::kFuse) {
    CKPT_ASSIGN_OR_RETURN(tensors, fuse_lora(tensors, lora));
    merge.notes.push_back("LoRA fused into the weights (" + describe + ")");
    return std::optional<LoraExport>();
  }
  std::optional<std::string> base_name;
  if (merge.config_json) {
    CKPT_ASSIGN_OR_RETURN(base_name, config_name_or_path(*merge.config_json));
  }
  CKPT_ASSIGN_OR_RETURN(auto adapter, export_lora_adapter(tensors, lora, base_name));
  tensors = std::move(adapter.base);
  merge.notes.push_back("LoRA written as a PEFT adapter in lora_adapter/ (" + describe + ")");
  return std::optional<LoraExport>(std::move(adapter));
}

void set_output_dtypes(std::vector<LogicalTensor>& tensors, std::optional<DType> float_dtype) {
  if (!float_dtype) return;
  for (auto& t : tensors)
    if (dtype_info(t.source_dtype).is_float) t.dtype = *float_dtype;
}

}  // namespace

namespace {

constexpr std::string_view kScratchPrefix = "ckptstream-scratch-";

}  // namespace

ScratchDir::ScratchDir() {
  std::error_code ec;
  fs::path tmp = fs::temp_directory_path(ec);
  if (ec) return;                                     // the reader reports it on first use
  remove_abandoned_directories(tmp, kScratchPrefix);  // what killed runs left
  std::random_device random;
  for (int attempt = 0; attempt < 16 && path_.empty(); ++attempt) {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, "%d-%08x", static_cast<int>(::getpid()),
                  static_cast<unsigned>(random()));
    fs::path dir = tmp / (std::string(kScratchPrefix) + suffix);
    auto lock = make_locked_directory(dir, "scratch", {}, 0700);  // decoded tensors: private
    if (!lock.ok()) continue;
    path_ = dir;
    lock_ = std::move(lock).value();
  }
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  if (!path_.empty()) fs::remove_all(path_, ec);
  if (lock_) lock_->release();
}

Result<Backend> parse_backend(std::string_view text) {
  if (text == "auto") return Backend::kAuto;
  if (text == "fsdp") return Backend::kFsdp;
  if (text == "dcp") return Backend::kDcp;
  if (text == "megatron")
    return unsupported("--backend " + std::string(text) + " is not supported yet");
  return usage_error("--backend must be auto, fsdp or dcp (got '" + std::string(text) + "')");
}

Result<MergePlan> plan_merge(const fs::path& local_dir, const MergeOptions& options) {
  MergePlan merge;
  merge.scratch = std::make_shared<ScratchDir>();
  CKPT_ASSIGN_OR_RETURN(auto source, read_source(local_dir, options, *merge.scratch));
  if (options.hf_config) {
    CKPT_ASSIGN_OR_RETURN(bool found, regular_file_exists(*options.hf_config / "config.json"));
    if (!found)
      return usage_error("--hf-config " + options.hf_config->string() + ": no config.json there");
    source.hf_dir = options.hf_config;
  }
  merge.layout = source.layout;
  merge.notes = std::move(source.notes);

  std::vector<SideFile> side_files;
  std::optional<HfConfig> config;
  if (source.hf_dir) {
    CKPT_ASSIGN_OR_RETURN(side_files, find_side_files(*source.hf_dir));
    CKPT_ASSIGN_OR_RETURN(bool has_config, regular_file_exists(*source.hf_dir / "config.json"));
    if (has_config) {
      merge.config_json = *source.hf_dir / "config.json";
      CKPT_ASSIGN_OR_RETURN(config, read_hf_config(*merge.config_json));
    }
  }
  if (!merge.config_json && !options.raw_state_dict && options.backend != Backend::kFsdp &&
      !looks_like_fsdp_checkpoint(local_dir))
    return usage_error(local_dir.string() +
                       ": no config.json found beside the checkpoint; name the model's "
                       "Hugging Face directory (its config and tokenizer) with --hf-config DIR");
  if (!merge.config_json && !options.raw_state_dict)
    merge.notes.push_back("no huggingface/config.json: the output has no config");

  auto tensors = std::move(source.tensors);
  std::optional<LoraExport> adapter;
  if (!options.raw_state_dict) {
    CKPT_ASSIGN_OR_RETURN(adapter, apply_lora(local_dir, options, merge, tensors));
    drop_tied_output(options, config, tensors, merge.notes);
    if (!options.keep_packed_experts && config) {
      CKPT_ASSIGN_OR_RETURN(tensors,
                            unpack_packed_experts(std::move(tensors), *config, merge.notes));
    }
  }

  CKPT_ASSIGN_OR_RETURN(auto float_dtype, resolve_float_dtype(options.dtype, merge.config_json));
  set_output_dtypes(tensors, float_dtype);
  if (tensors.empty())
    return invalid_input(local_dir.string() + ": the checkpoint holds no tensor");

  for (const auto& t : tensors) merge.tensor_order.push_back(t.name);
  merge.model.inputs = source.inputs;
  merge.model.side_files = std::move(side_files);
  CKPT_TRY(safetensors::plan_output(std::move(tensors), {options.max_shard_size}, merge.model));
  if (adapter) {
    Plan plan;
    plan.inputs = source.inputs;
    set_output_dtypes(adapter->adapter, float_dtype);
    // PEFT loads one adapter_model.safetensors, never shards.
    CKPT_TRY(safetensors::plan_output(std::move(adapter->adapter), {UINT64_MAX}, plan));
    plan.files.at(0).name = "adapter_model.safetensors";
    plan.text_files.push_back(TextFile{"adapter_config.json", adapter->adapter_config_json});
    merge.adapter = std::move(plan);
  }
  return merge;
}

}  // namespace ckptstream
