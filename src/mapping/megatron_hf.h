// Megatron-Core parameter names -> Hugging Face names, one declarative table per model family
// (docs/formats/megatron.md §3, §4). Input: the canonical global tensors of a Megatron checkpoint
// (formats/megatron_checkpoint.h: per layer, per expert). Output: the tensors transformers'
// save_pretrained writes for the architecture config.json names.
//
// Transforms, all views (plan/views.h), no byte moves:
//   copy     the tensor as it is
//   qkv      linear_qkv [ng * (nh/ng + 2) * d, H] (per query group: its nh/ng query heads, one key
//            head, one value head) -> q_proj [nh*d, H], k_proj [ng*d, H], v_proj [ng*d, H]; the
//            same for the bias
//   gate_up  linear_fc1 [2F, H] = [gate; up] -> gate_proj, up_proj (Mixtral: w1, w3)
//   vocab    embedding / output rows beyond config.vocab_size are Megatron's padding: dropped
//
// Completeness: every input tensor is mapped by a rule or skipped by a named one; anything else
// is an error listing the names (no expert, MTP or vision weight is dropped silently). The output
// is then checked against what config.json's architecture must hold (every layer's attention,
// norms and MLP, every expert, the embedding, the final norm, lm_head unless tied).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "formats/hf_config.h"
#include "formats/source_model.h"

namespace ckptstream {

struct MegatronMapOptions {
  // A one-row output layer is a value head: written as score.weight (the model is then a
  // token-classification model with num_labels 1, as verl's critic is).
  bool value_model = false;
  // A vision-language model's vision tower in Hugging Face names ("visual.*"), used when the
  // checkpoint holds none (verl's --vit_dir: a frozen tower is not saved with the run).
  std::optional<SourceTensors> vision_weights;
  // Experts packed per layer and projection as transformers 5 holds them in memory
  // (--keep-packed-experts), instead of one tensor per expert as the hub's models are.
  bool packed_experts = false;
};

// The families with a table, for messages: "llama, mistral, qwen2, qwen3, ...".
std::string megatron_family_names();

// `source` (canonical megatron-core names, formats/megatron_checkpoint.h) named for Hugging Face
// by the table of config.model_type(). The result's notes are the mapping's own: the family, the
// coverage and the trimmed vocab (the reader's notes say what it skipped by rule). Errors: an
// unknown family (listing the source names), unmapped tensors (listed), a shape that disagrees with
// config.json (heads, groups, vocab), expected names missing from the output.
Result<SourceTensors> map_megatron_to_hf(SourceTensors source, const HfConfig& config,
                                         const MegatronMapOptions& options);

// The reverse: the tensors of a Hugging Face model (Hugging Face names, per-expert or
// transformers 5's packed experts) as megatron-core's canonical global tensors: one per layer and
// per expert, named as formats/megatron_checkpoint.h names what it reads (decoder.layers.{i}.*,
// decoder.layers.{i}.mlp.experts.{e}.linear_fc1.weight, mtp.layers.{k}.transformer_layer.*), the
// norms under the local spec's module names (input_layernorm, pre_mlp_layernorm, q_layernorm,
// kv_layernorm), the embedding and output rows zero-padded to `padded_vocab` (0: as they are).
// Errors: an unknown family, Hugging Face tensors no rule maps (listed), tensors config.json's
// architecture needs that the model lacks, shapes that disagree with config.json.
Result<SourceTensors> map_hf_to_megatron(SourceTensors hf, const HfConfig& config,
                                         std::int64_t padded_vocab);

}  // namespace ckptstream
