// The one reader of a Hugging Face config.json. What the layers above need of it: the architecture
// (model_type, architectures), the sizes that let a mapping check tensor shapes, and the few flags
// that change what transformers' save_pretrained writes. Vision-language models nest the language
// model's settings under "text_config"; its values are read too, and the size accessors fall back
// to them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/result.h"

namespace ckptstream {

struct HfTextConfig {
  std::string model_type;  // "" when absent
  std::optional<std::int64_t> hidden_size;
  std::optional<std::int64_t> num_hidden_layers;
  // The first of num_local_experts (Mixtral, PhiMoE, gpt-oss), num_experts (Qwen-MoE, OLMoE,
  // Jamba), n_routed_experts (DeepSeek, GLM-MoE), moe_num_experts (ERNIE) that is present.
  std::optional<std::int64_t> num_experts;
  std::int64_t zero_expert_num = 0;  // LongCat-Flash: identity experts packed after the routed ones
  // Attention and MLP sizes, for layouts that interleave or pad (Megatron's fused QKV, its vocab
  // padding). head_dim defaults to hidden_size / num_attention_heads where absent.
  std::optional<std::int64_t> num_attention_heads;
  std::optional<std::int64_t> num_key_value_heads;
  std::optional<std::int64_t> head_dim;
  std::optional<std::int64_t> vocab_size;
  std::optional<std::int64_t> intermediate_size;
  std::optional<std::int64_t> moe_intermediate_size;
  std::optional<std::int64_t> q_lora_rank;  // DeepSeek MLA; null: no q-LoRA
  std::optional<std::int64_t> kv_lora_rank;
  std::optional<std::int64_t> num_nextn_predict_layers;  // DeepSeek MTP layers
};

// A vision-language model's vision tower ("vision_config").
struct HfVisionConfig {
  std::optional<std::int64_t> depth;  // blocks
  std::optional<std::int64_t> hidden_size;
  std::optional<std::int64_t> num_heads;
};

struct HfConfig {
  std::filesystem::path path;  // for messages
  std::vector<std::string> architectures;
  std::optional<bool> tie_word_embeddings;
  std::string dtype;         // transformers v5 "dtype", else v4 "torch_dtype"; "" when absent
  std::string dtype_key;     // which of the two it was, for messages
  std::string name_or_path;  // "_name_or_path": the model it was made from ("" when absent)
  // The Python modules of the remote code its "auto_map" names ("modeling_x.XForCausalLM" and
  // "repo--modeling_x.XForCausalLM" give modeling_x.py), which travel with the model.
  std::vector<std::string> remote_code_modules;
  HfTextConfig top;  // the top-level keys
  std::optional<HfTextConfig> text_config;
  std::optional<HfVisionConfig> vision_config;
  // "quantization_config": its quant_method ("fp8"), and for block-quantized weights (DeepSeek's
  // fine-grained FP8) weight_block_size [rows, cols]. Empty / absent when not quantized.
  std::string quant_method;
  std::optional<std::pair<std::int64_t, std::int64_t>> weight_block_size;

  const std::string& model_type() const { return top.model_type; }
  // Top-level value, else text_config's.
  std::optional<std::int64_t> hidden_size() const;
  std::optional<std::int64_t> num_experts() const;
  std::int64_t zero_expert_num() const;
  // The language model's settings: text_config's when there is one, else the top level's.
  const HfTextConfig& language() const { return text_config ? *text_config : top; }
};

// config.json's text without its top-level key `key` (and that key's value): what a converted
// model's config says once the conversion undid what the key describes ("quantization_config"
// after dequantizing). The rest of the text is kept byte for byte. Errors: not a JSON object.
Result<std::string> config_text_without(std::string_view text, std::string_view key);

// Reads config.json. Errors name the file: unreadable, not a JSON object, or a known key with the
// wrong JSON type (e.g. "num_local_experts": "8").
Result<HfConfig> read_hf_config(const std::filesystem::path& config_json);

}  // namespace ckptstream
