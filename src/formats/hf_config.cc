#include "formats/hf_config.h"

#include <cctype>

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

// The end of the JSON value that starts at text[at] (after whitespace): strings with escapes,
// nested objects and arrays, scalars up to the next ',' '}' or ']'.
std::size_t json_value_end(std::string_view text, std::size_t at) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = at; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
      if (!in_string && depth == 0) return i + 1;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (depth == 0) return i;
      if (--depth == 0) return i + 1;
    } else if (c == ',' && depth == 0) {
      return i;
    }
  }
  return text.size();
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
  element quantization;
  if (!doc["quantization_config"].get(quantization) && quantization.is_object()) {
    CKPT_TRY(read_string(quantization, "quant_method", config.quant_method));
    simdjson::dom::array block;
    if (!quantization["weight_block_size"].get(block)) {
      std::vector<std::int64_t> sizes;
      for (element e : block) {
        std::int64_t v = 0;
        if (e.get(v) || v <= 0)
          return invalid_input(
              "quantization_config.weight_block_size is not a list of positive "
              "integers");
        sizes.push_back(v);
      }
      if (sizes.size() != 2)
        return invalid_input("quantization_config.weight_block_size needs [rows, columns]");
      config.weight_block_size = {sizes[0], sizes[1]};
    }
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

Result<std::string> config_text_without(std::string_view text, std::string_view key) {
  std::string quoted = "\"" + std::string(key) + "\"";
  // Top-level keys only: walk the object's members at depth 1.
  std::size_t open = text.find('{');
  if (open == std::string_view::npos) return invalid_input("config.json is not a JSON object");
  std::size_t i = open + 1;
  std::size_t member_start = i;  // after '{' or the previous ','
  while (i < text.size()) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i >= text.size() || text[i] == '}') break;
    std::size_t name_end = json_value_end(text, i);
    std::string_view name = text.substr(i, name_end - i);
    std::size_t colon = text.find(':', name_end);
    if (colon == std::string_view::npos) return invalid_input("config.json: a key without value");
    std::size_t value = colon + 1;
    while (value < text.size() && std::isspace(static_cast<unsigned char>(text[value]))) ++value;
    std::size_t value_end = json_value_end(text, value);
    std::size_t next = value_end;
    while (next < text.size() && std::isspace(static_cast<unsigned char>(text[next]))) ++next;
    bool last = next >= text.size() || text[next] != ',';
    if (name == quoted) {
      std::string out(text);
      if (!last) return out.erase(member_start, next + 1 - member_start);
      // The last member: drop the comma before it instead.
      std::size_t comma = text.rfind(',', member_start);
      std::size_t from = comma != std::string_view::npos && comma > open ? comma : member_start;
      return out.erase(from, value_end - from);
    }
    if (last) break;
    i = next + 1;
    member_start = i;
  }
  return std::string(text);
}

}  // namespace ckptstream
