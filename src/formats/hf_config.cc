#include "formats/hf_config.h"

#include <simdjson.h>

#include <string_view>

#include "io/input_file.h"

namespace ckptstream {

namespace {

using simdjson::dom::element;

// Reads `key` of `object` into `out` when present and not null; a value of another JSON type is
// an error naming the key.
template <class T>
Status read_optional(element object, std::string_view key, std::optional<T>& out) {
  element value;
  if (object[key].get(value) || value.is_null()) return {};
  T typed{};
  if (value.get(typed)) return invalid_input("\"" + std::string(key) + "\" has the wrong type");
  out = typed;
  return {};
}

Status read_string(element object, std::string_view key, std::string& out) {
  std::optional<std::string_view> text;
  CKPT_TRY(read_optional(object, key, text));
  if (text) out = std::string(*text);
  return {};
}

Result<HfTextConfig> read_text_config(element object) {
  HfTextConfig config;
  CKPT_TRY(read_string(object, "model_type", config.model_type));
  CKPT_TRY(read_optional(object, "hidden_size", config.hidden_size));
  CKPT_TRY(read_optional(object, "num_hidden_layers", config.num_hidden_layers));
  for (std::string_view key :
       {"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"}) {
    CKPT_TRY(read_optional(object, key, config.num_experts));
    if (config.num_experts) break;
  }
  std::optional<std::int64_t> zero_experts;
  CKPT_TRY(read_optional(object, "zero_expert_num", zero_experts));
  config.zero_expert_num = zero_experts.value_or(0);
  CKPT_TRY(read_optional(object, "num_attention_heads", config.num_attention_heads));
  CKPT_TRY(read_optional(object, "num_key_value_heads", config.num_key_value_heads));
  CKPT_TRY(read_optional(object, "head_dim", config.head_dim));
  CKPT_TRY(read_optional(object, "vocab_size", config.vocab_size));
  CKPT_TRY(read_optional(object, "intermediate_size", config.intermediate_size));
  CKPT_TRY(read_optional(object, "moe_intermediate_size", config.moe_intermediate_size));
  CKPT_TRY(read_optional(object, "q_lora_rank", config.q_lora_rank));
  CKPT_TRY(read_optional(object, "kv_lora_rank", config.kv_lora_rank));
  CKPT_TRY(read_optional(object, "num_nextn_predict_layers", config.num_nextn_predict_layers));
  return config;
}

// auto_map: {"AutoModelForCausalLM": "modeling_x.XForCausalLM" or a list of such, ...}; values of
// other types are left alone (remote code is copied when it is named, never required).
std::vector<std::string> remote_code_modules(element doc) {
  std::vector<std::string> modules;
  simdjson::dom::object auto_map;
  if (doc["auto_map"].get(auto_map)) return modules;
  auto add = [&](std::string_view ref) {
    auto sep = ref.rfind("--");  // "repo--module.Class" form
    if (sep != std::string_view::npos) ref = ref.substr(sep + 2);
    auto dot = ref.find('.');
    if (dot != std::string_view::npos)
      modules.emplace_back(std::string(ref.substr(0, dot)) + ".py");
  };
  for (auto field : auto_map) {
    std::string_view ref;
    simdjson::dom::array refs;
    if (!field.value.get(ref)) {
      add(ref);
    } else if (!field.value.get(refs)) {
      for (auto item : refs)
        if (!item.get(ref)) add(ref);
    }
  }
  return modules;
}

Result<HfConfig> parse_config(element doc) {
  if (!doc.is_object()) return invalid_input("not a JSON object");
  HfConfig config;
  CKPT_ASSIGN_OR_RETURN(config.top, read_text_config(doc));
  CKPT_TRY(read_optional(doc, "tie_word_embeddings", config.tie_word_embeddings));
  for (std::string_view key : {"dtype", "torch_dtype"}) {
    CKPT_TRY(read_string(doc, key, config.dtype));
    if (!config.dtype.empty()) {
      config.dtype_key = key;
      break;
    }
  }
  std::string_view name_or_path;
  if (!doc["_name_or_path"].get_string().get(name_or_path)) config.name_or_path = name_or_path;
  config.remote_code_modules = remote_code_modules(doc);
  element architectures;
  if (!doc["architectures"].get(architectures) && !architectures.is_null()) {
    simdjson::dom::array names;
    if (architectures.get(names)) return invalid_input("\"architectures\" is not a list");
    for (element name : names) {
      std::string_view text;
      if (name.get(text)) return invalid_input("\"architectures\" holds a non-string");
      config.architectures.emplace_back(text);
    }
  }
  element vision;
  if (!doc["vision_config"].get(vision) && vision.is_object()) {
    HfVisionConfig v;
    auto status = read_optional(vision, "depth", v.depth);
    if (status.ok()) status = read_optional(vision, "hidden_size", v.hidden_size);
    if (status.ok()) status = read_optional(vision, "num_heads", v.num_heads);
    if (!status.ok()) return status.error().with_context("vision_config");
    config.vision_config = v;
  }
  element text_config;
  if (!doc["text_config"].get(text_config) && text_config.is_object()) {
    auto nested = read_text_config(text_config);
    if (!nested) return nested.error().with_context("text_config");
    config.text_config = std::move(nested).value();
  }
  return config;
}

}  // namespace

std::optional<std::int64_t> HfConfig::hidden_size() const {
  if (top.hidden_size || !text_config) return top.hidden_size;
  return text_config->hidden_size;
}

std::optional<std::int64_t> HfConfig::num_experts() const {
  if (top.num_experts || !text_config) return top.num_experts;
  return text_config->num_experts;
}

std::int64_t HfConfig::zero_expert_num() const {
  if (top.zero_expert_num || !text_config) return top.zero_expert_num;
  return text_config->zero_expert_num;
}

Result<HfConfig> read_hf_config(const std::filesystem::path& config_json) {
  CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(config_json));
  simdjson::dom::parser parser;
  element doc;
  if (parser.parse(text).get(doc)) return invalid_input(config_json.string() + ": not valid JSON");
  auto config = parse_config(doc);
  if (!config) return config.error().with_context(config_json.string());
  config->path = config_json;
  return config;
}

}  // namespace ckptstream
