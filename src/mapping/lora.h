// LoRA adapters in a merged state dict, as PEFT names them (verl.md §1.3, §1.6, §2.5). A model
// wrapped by peft.get_peft_model has, for each adapted module <m> (say
// model.layers.0.self_attn.q_proj):
//   base_model.model.<m>.base_layer.weight     W [out, in] (and .base_layer.bias)
//   base_model.model.<m>.lora_A.default.weight A [r, in]
//   base_model.model.<m>.lora_B.default.weight B [out, r]
// and every other parameter as base_model.model.<name>. PEFT's get_peft_model_state_dict (what
// save_pretrained writes to adapter_model.safetensors) drops the adapter name: <m>.lora_A.weight.
// Both spellings are recognised, with or without the base_model.model. prefix.
//
// Fusing writes PEFT's merge_and_unload: W + scale * (B @ A), scale = lora_alpha / r, or
// lora_alpha / sqrt(r) with rsLoRA, computed in float32 and cast once to W's output dtype (the
// executor does it while streaming: LoraDelta, plan.h). PEFT itself, for bf16/fp16 weights on
// CPU, rounds the delta to the weight dtype before a bf16 add (two roundings); fusing in float32
// is the more accurate of the two and what the issue asks for.
//
// Not supported, and refused with a clear error rather than written wrong: LoRA on embeddings
// (lora_embedding_A/B), DoRA (lora_magnitude_vector), LoRA biases (lora_B bias), several named
// adapters, rank_pattern / alpha_pattern, fan_in_fan_out (GPT-2 Conv1D layers).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "plan/plan.h"

namespace ckptstream {

// The command line's say on the hyper-parameters (--lora-alpha, --lora-rank, --use-rslora).
struct LoraFlags {
  std::optional<double> alpha;
  std::optional<std::int64_t> rank;
  std::optional<bool> use_rslora;
};

struct LoraParams {
  double alpha = 0;
  std::optional<std::int64_t> rank;  // none: taken from the tensors' shapes
  bool use_rslora = false;
  std::optional<std::string> task_type;  // "CAUSAL_LM", ...
  std::string alpha_source;              // where alpha came from, for messages
  std::string rank_source;

  // alpha / r, or alpha / sqrt(r) with rsLoRA, as PEFT's LoraLayer.update_layer computes it.
  double scale(std::int64_t r) const;
};

inline constexpr std::string_view kLoraTrainMetaName = "lora_train_meta.json";
inline constexpr std::string_view kAdapterConfigPath = "lora_adapter/adapter_config.json";

// Each value from the first source that has it: the flags, then <dir>/lora_train_meta.json
// ({"r", "lora_alpha", "task_type", "use_rslora"?}, verl S2), then
// <dir>/lora_adapter/adapter_config.json (PEFT's LoraConfig, verl S1). alpha is never guessed:
// without one, a usage error that explains the flags. Malformed files, and LoRA variants this
// tool cannot fuse (rank_pattern, alpha_pattern, DoRA, fan_in_fan_out, lora biases), are errors.
Result<LoraParams> find_lora_params(const std::filesystem::path& dir, const LoraFlags& flags);

// True if any name has a PEFT LoRA component (lora_A, lora_B, lora_embedding_A, ...).
bool has_lora_keys(const std::vector<LogicalTensor>& tensors);

// The base model with every adapter fused: names restored (base_model.model. stripped,
// .base_layer removed), a LoraDelta on each adapted weight, LoRA keys dropped, order kept.
// Each adapter's r (lora_A's rows) must agree with params.rank when known, and across adapters.
Result<std::vector<LogicalTensor>> fuse_lora(const std::vector<LogicalTensor>& tensors,
                                             const LoraParams& params);

// The base model and a PEFT adapter folder, as verl's merger should have written them:
// OUT/ (base), OUT/lora_adapter/adapter_model.safetensors and adapter_config.json.
struct LoraExport {
  std::vector<LogicalTensor> base;     // renamed as fuse_lora does, without deltas
  std::vector<LogicalTensor> adapter;  // base_model.model.<m>.lora_{A,B}.weight, in input order
  std::string adapter_config_json;     // PEFT LoraConfig, json.dumps(indent=2, sort_keys=True)
};
// `base_model_name_or_path`: config.json's _name_or_path (HfConfig::name_or_path), or none.
Result<LoraExport> export_lora_adapter(const std::vector<LogicalTensor>& tensors,
                                       const LoraParams& params,
                                       const std::optional<std::string>& base_model_name_or_path);

}  // namespace ckptstream
