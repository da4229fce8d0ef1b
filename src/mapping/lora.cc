#include "mapping/lora.h"

#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <set>

#include "core/json_text.h"
#include "io/input_file.h"

namespace ckptstream {
namespace {

constexpr std::string_view kPeftPrefix = "base_model.model.";

// A number as Python's json.dumps writes it: integers without a fraction (LoraConfig.lora_alpha
// is an int), other values in shortest round-trip form.
std::string python_number(double value) {
  if (std::trunc(value) == value && std::fabs(value) < 1e15)
    return std::to_string(static_cast<std::int64_t>(value));
  char buffer[32];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  std::string text(buffer, end);
  if (text.find_first_of(".e") == std::string::npos) text += ".0";
  return text;
}

// --- hyper-parameters ------------------------------------------------------------------------

// What one source says; absent fields are left for the next source.
struct ParamSource {
  std::optional<double> alpha;
  std::optional<std::int64_t> rank;
  std::optional<bool> use_rslora;
  std::optional<std::string> task_type;
};

Result<simdjson::dom::object> parse_object(simdjson::dom::parser& parser,
                                           const std::filesystem::path& path) {
  CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(path));
  simdjson::dom::object object;
  // The parser keeps the document; `text` may go once parsed.
  if (auto error = parser.parse(text).get_object().get(object); error)
    return invalid_input(path.string() + ": not a JSON object (" + simdjson::error_message(error) +
                         ")");
  return object;
}

// Reads the fields both files share: r, lora_alpha, use_rslora, task_type.
Result<ParamSource> read_common_fields(simdjson::dom::object object) {
  ParamSource source;
  if (auto value = object["lora_alpha"]; !value.error() && !value.is_null()) {
    double alpha;
    if (value.get_double().get(alpha))  // integers convert too
      return invalid_input("lora_alpha is not a number");
    source.alpha = alpha;  // checked when used (fill_from)
  }
  if (auto value = object["r"]; !value.error() && !value.is_null()) {
    std::int64_t rank;
    if (value.get_int64().get(rank) || rank < 1)
      return invalid_input("r is not a positive integer");
    source.rank = rank;
  }
  if (auto value = object["use_rslora"]; !value.error() && !value.is_null()) {
    bool rslora;
    if (value.get_bool().get(rslora)) return invalid_input("use_rslora is not a boolean");
    source.use_rslora = rslora;
  }
  if (auto value = object["task_type"]; !value.error() && !value.is_null()) {
    std::string_view task;
    if (value.get_string().get(task)) return invalid_input("task_type is not a string");
    source.task_type = std::string(task);
  }
  return source;
}

bool is_empty_or_null(simdjson::dom::element value) {
  if (value.is_null()) return true;
  if (value.is_object()) return simdjson::dom::object(value).size() == 0;
  if (value.is_array()) return simdjson::dom::array(value).size() == 0;
  return false;
}

// PEFT's adapter_config.json: the LoRA fields above, after refusing what cannot be fused.
Result<ParamSource> read_adapter_config(simdjson::dom::object object) {
  if (auto type = object["peft_type"];
      !type.error() && type.is_string() && std::string_view(type) != "LORA") {
    return unsupported("peft_type is " + std::string(std::string_view(type)) + ", not LORA");
  }
  for (const char* field : {"rank_pattern", "alpha_pattern"}) {
    if (auto value = object[field]; !value.error() && !is_empty_or_null(value.value_unsafe())) {
      return unsupported(std::string(field) +
                         " is set: per-module ranks or alphas are not supported; fuse with a "
                         "plain LoRA config");
    }
  }
  for (const char* field : {"use_dora", "fan_in_fan_out", "lora_bias"}) {
    if (auto value = object[field]; !value.error() && value.is_bool() && bool(value))
      return unsupported(std::string(field) + " is true: not supported");
  }
  return read_common_fields(object);
}

// Merges `source` into `params` where params has nothing yet; true once alpha, rank and
// use_rslora are all known.
Result<bool> fill_from(LoraParams& params, bool& rslora_known, const ParamSource& source,
                       const std::string& name) {
  if (params.alpha == 0 && source.alpha) {
    if (!std::isfinite(*source.alpha) || *source.alpha <= 0) {
      return invalid_input(name + ": lora_alpha is " + python_number(*source.alpha) +
                           " (verl's merger writes 0 on purpose); pass --lora-alpha with the "
                           "value used in training");
    }
    params.alpha = *source.alpha;
    params.alpha_source = name;
  }
  if (!params.rank && source.rank) {
    params.rank = source.rank;
    params.rank_source = name;
  }
  if (!rslora_known && source.use_rslora) {
    params.use_rslora = *source.use_rslora;
    rslora_known = true;
  }
  if (!params.task_type && source.task_type) params.task_type = source.task_type;
  return params.alpha != 0 && params.rank && rslora_known;
}

// --- key names -------------------------------------------------------------------------------

enum class Factor { kNone, kA, kB };

struct KeyInfo {
  Factor factor = Factor::kNone;
  std::string module;  // for lora_A/lora_B keys: the adapted module, prefix stripped
  std::string name;    // for other keys: the base model's name
};

std::vector<std::string_view> split_dots(std::string_view name) {
  std::vector<std::string_view> parts;
  for (std::size_t begin = 0;;) {
    std::size_t dot = name.find('.', begin);
    parts.push_back(name.substr(begin, dot - begin));
    if (dot == std::string_view::npos) return parts;
    begin = dot + 1;
  }
}

std::string join_dots(const std::vector<std::string_view>& parts, std::size_t begin,
                      std::size_t end) {
  std::string out;
  for (std::size_t i = begin; i < end; ++i) {
    if (i > begin) out += '.';
    out += parts[i];
  }
  return out;
}

bool is_lora_component(std::string_view part) {
  return part.starts_with("lora_");
}

Error unsupported_lora_key(const std::string& name, std::string_view part) {
  std::string why;
  if (part.starts_with("lora_embedding_"))
    why = "LoRA on embeddings (lora_embedding_A/B) is not supported";
  else if (part == "lora_magnitude_vector")
    why = "DoRA (lora_magnitude_vector) is not supported";
  else if (name.ends_with(".bias"))
    why = "LoRA biases (lora_bias=True) are not supported";
  else
    why =
        "expected <module>.lora_A.weight or <module>.lora_A.default.weight (one adapter named "
        "'default'); other LoRA variants are not supported";
  return unsupported("tensor '" + name + "': " + why);
}

// Classifies one state-dict key (see lora.h).
Result<KeyInfo> classify(const std::string& full_name) {
  std::string_view name = full_name;
  if (name.starts_with(kPeftPrefix)) name.remove_prefix(kPeftPrefix.size());
  std::vector<std::string_view> parts = split_dots(name);
  auto lora_at = std::find_if(parts.begin(), parts.end(), is_lora_component);
  KeyInfo info;
  if (lora_at != parts.end()) {
    auto index = static_cast<std::size_t>(lora_at - parts.begin());
    std::size_t tail = parts.size() - index;  // lora_X [default] weight
    bool plain = tail == 2 || (tail == 3 && parts[index + 1] == "default");
    if (index == 0 || !plain || parts.back() != "weight" ||
        (*lora_at != "lora_A" && *lora_at != "lora_B")) {
      return unsupported_lora_key(full_name, *lora_at);
    }
    info.factor = *lora_at == "lora_A" ? Factor::kA : Factor::kB;
    info.module = join_dots(parts, 0, index);
    return info;
  }
  for (std::string_view part : parts) {
    if (part == "modules_to_save" || part == "original_module") {
      return unsupported("tensor '" + full_name +
                         "': PEFT modules_to_save copies are not supported (which copy is the "
                         "trained one depends on the adapter)");
    }
  }
  std::vector<std::string_view> kept;
  for (std::string_view part : parts)
    if (part != "base_layer") kept.push_back(part);
  info.name = join_dots(kept, 0, kept.size());
  return info;
}

// One adapted module: indexes into the input tensors.
struct Adapter {
  std::optional<std::size_t> a, b, base;
  std::int64_t rank = 0;
};

// The state dict taken apart: base tensors renamed, adapters matched with their base weights
// and checked against each other and against params.rank.
struct Analysis {
  std::vector<KeyInfo> keys;                   // per input tensor
  std::map<std::string, Adapter> adapters;     // by module
  std::map<std::size_t, std::string> base_of;  // base weight index -> module
  std::int64_t rank = 0;
};

Status check_adapter(const std::string& module, Adapter& adapter,
                     const std::vector<LogicalTensor>& tensors) {
  if (!adapter.a || !adapter.b) {
    return invalid_input("module '" + module + "' has " + (adapter.a ? "lora_A" : "lora_B") +
                         " but no " + (adapter.a ? "lora_B" : "lora_A"));
  }
  if (!adapter.base) {
    return invalid_input("module '" + module + "' has LoRA factors but no base weight (" + module +
                         ".base_layer.weight); a save_lora_only checkpoint needs its base model");
  }
  const Shape& a = tensors[*adapter.a].shape;
  const Shape& b = tensors[*adapter.b].shape;
  const Shape& w = tensors[*adapter.base].shape;
  if (a.size() != 2 || b.size() != 2 || w.size() != 2 || a[0] != b[1] || a[0] < 1 || a[1] != w[1] ||
      b[0] != w[0]) {
    return invalid_input("module '" + module + "': shapes do not fit W + B @ A: W " +
                         shape_text(w) + ", lora_A " + shape_text(a) + ", lora_B " + shape_text(b));
  }
  adapter.rank = a[0];
  return {};
}

Result<Analysis> analyse(const std::vector<LogicalTensor>& tensors, const LoraParams& params) {
  Analysis analysis;
  std::map<std::string, std::size_t> by_name;  // renamed base tensors
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    CKPT_ASSIGN_OR_RETURN(KeyInfo key, classify(tensors[i].name));
    if (key.factor == Factor::kNone) {
      if (!by_name.emplace(key.name, i).second) {
        return invalid_input("tensors '" + tensors[by_name[key.name]].name + "' and '" +
                             tensors[i].name + "' both become '" + key.name + "'");
      }
    } else {
      Adapter& adapter = analysis.adapters[key.module];
      auto& slot = key.factor == Factor::kA ? adapter.a : adapter.b;
      if (slot) {
        return invalid_input("tensors '" + tensors[*slot].name + "' and '" + tensors[i].name +
                             "' are the same LoRA factor");
      }
      slot = i;
    }
    analysis.keys.push_back(std::move(key));
  }
  for (auto& [module, adapter] : analysis.adapters) {
    if (auto found = by_name.find(module + ".weight"); found != by_name.end())
      adapter.base = found->second;
    CKPT_TRY(check_adapter(module, adapter, tensors));
    analysis.base_of[*adapter.base] = module;
    if (params.rank && adapter.rank != *params.rank) {
      return invalid_input("module '" + module + "': lora_A " +
                           shape_text(tensors[*adapter.a].shape) + " has rank " +
                           std::to_string(adapter.rank) + " but " + params.rank_source +
                           " says r = " + std::to_string(*params.rank));
    }
    if (analysis.rank != 0 && adapter.rank != analysis.rank) {
      return unsupported("adapters have different ranks (" + std::to_string(analysis.rank) +
                         " and " + std::to_string(adapter.rank) + " at '" + module +
                         "'): per-module ranks (rank_pattern) are not supported");
    }
    analysis.rank = adapter.rank;
  }
  return analysis;
}

// The base model's tensors, renamed, in input order; with deltas when `fuse`.
std::vector<LogicalTensor> base_tensors(const std::vector<LogicalTensor>& tensors,
                                        const Analysis& analysis, const LoraParams& params,
                                        bool fuse) {
  std::vector<LogicalTensor> out;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const KeyInfo& key = analysis.keys[i];
    if (key.factor != Factor::kNone) continue;
    LogicalTensor tensor = tensors[i];
    tensor.name = key.name;
    if (auto module = analysis.base_of.find(i); fuse && module != analysis.base_of.end()) {
      const Adapter& adapter = analysis.adapters.at(module->second);
      auto delta = std::make_shared<LoraDelta>();
      delta->a = tensors[*adapter.a];
      delta->b = tensors[*adapter.b];
      delta->scale = params.scale(adapter.rank);
      tensor.lora = std::move(delta);
    }
    out.push_back(std::move(tensor));
  }
  return out;
}

// --- adapter_config.json -----------------------------------------------------------------------

std::string python_string(std::string_view text) {
  std::string out;
  append_python_json_string(out, text);
  return out;
}

std::string adapter_config(const LoraParams& params, std::int64_t rank,
                           const std::set<std::string>& target_modules,
                           const std::optional<std::string>& base_model) {
  std::string modules = "[";
  for (const auto& name : target_modules)
    modules += (modules.size() > 1 ? ",\n    " : "\n    ") + python_string(name);
  modules += target_modules.empty() ? "]" : "\n  ]";
  auto optional_string = [](const std::optional<std::string>& value) {
    return value ? python_string(*value) : std::string("null");
  };
  // LoraConfig's fields (peft >= 0.7, which added use_rslora); those left out take PEFT's
  // defaults. Sorted, as PeftConfigMixin.save_pretrained writes them.
  const std::pair<const char*, std::string> fields[] = {
      {"alpha_pattern", "{}"},
      {"auto_mapping", "null"},
      {"base_model_name_or_path", optional_string(base_model)},
      {"bias", "\"none\""},
      {"fan_in_fan_out", "false"},
      {"inference_mode", "true"},
      {"init_lora_weights", "true"},
      {"layers_pattern", "null"},
      {"layers_to_transform", "null"},
      {"lora_alpha", python_number(params.alpha)},
      {"lora_dropout", "0.0"},
      {"modules_to_save", "null"},
      {"peft_type", "\"LORA\""},
      {"r", std::to_string(rank)},
      {"rank_pattern", "{}"},
      {"revision", "null"},
      {"target_modules", modules},
      {"task_type", optional_string(params.task_type)},
      {"use_rslora", params.use_rslora ? "true" : "false"},
  };
  std::string json = "{";
  for (const auto& [key, value] : fields)
    json += std::string(json.size() > 1 ? ",\n  " : "\n  ") + "\"" + key + "\": " + value;
  return json + "\n}";
}

}  // namespace

double LoraParams::scale(std::int64_t r) const {
  auto r_value = static_cast<double>(r);
  return use_rslora ? alpha / std::sqrt(r_value) : alpha / r_value;
}

Result<LoraParams> find_lora_params(const std::filesystem::path& dir, const LoraFlags& flags) {
  LoraParams params;
  bool rslora_known = false;
  if (flags.alpha && (!std::isfinite(*flags.alpha) || *flags.alpha <= 0))
    return usage_error("--lora-alpha must be a positive number");
  if (flags.rank && *flags.rank < 1) return usage_error("--lora-rank must be a positive integer");
  ParamSource from_flags{flags.alpha, flags.rank, flags.use_rslora, std::nullopt};
  CKPT_ASSIGN_OR_RETURN(bool complete, fill_from(params, rslora_known, from_flags, "flags"));
  if (flags.alpha) params.alpha_source = "--lora-alpha";
  if (flags.rank) params.rank_source = "--lora-rank";

  simdjson::dom::parser parser;
  std::filesystem::path meta = dir / kLoraTrainMetaName;
  CKPT_ASSIGN_OR_RETURN(bool has_meta, regular_file_exists(meta));
  if (!complete && has_meta) {
    CKPT_ASSIGN_OR_RETURN(auto object, parse_object(parser, meta));
    auto source = read_common_fields(object);
    if (!source.ok()) return source.error().with_context(meta.string());
    CKPT_ASSIGN_OR_RETURN(complete, fill_from(params, rslora_known, *source, meta.string()));
  }
  std::filesystem::path config = dir / kAdapterConfigPath;
  CKPT_ASSIGN_OR_RETURN(bool has_config, regular_file_exists(config));
  if (!complete && has_config) {
    CKPT_ASSIGN_OR_RETURN(auto object, parse_object(parser, config));
    auto source = read_adapter_config(object);
    if (!source.ok()) return source.error().with_context(config.string());
    CKPT_TRY(fill_from(params, rslora_known, *source, config.string()));
  }
  if (params.alpha == 0) {
    return usage_error(
        "LoRA alpha is unknown: neither " + meta.string() + " nor " + config.string() +
        " gives lora_alpha, and it cannot be read from the weights. The fused weight is "
        "W + (alpha / r) * B @ A, so a guess would silently change the model: pass --lora-alpha "
        "with the value used in training (and --lora-rank, --use-rslora if they differ from "
        "the checkpoint); a PEFT adapter written instead of fusing needs it as well");
  }
  return params;
}

bool has_lora_keys(const std::vector<LogicalTensor>& tensors) {
  return std::any_of(tensors.begin(), tensors.end(), [](const LogicalTensor& tensor) {
    auto parts = split_dots(tensor.name);
    return std::any_of(parts.begin(), parts.end(), is_lora_component);
  });
}

Result<std::vector<LogicalTensor>> fuse_lora(const std::vector<LogicalTensor>& tensors,
                                             const LoraParams& params) {
  CKPT_ASSIGN_OR_RETURN(Analysis analysis, analyse(tensors, params));
  return base_tensors(tensors, analysis, params, true);
}

Result<LoraExport> export_lora_adapter(const std::vector<LogicalTensor>& tensors,
                                       const LoraParams& params,
                                       const std::optional<std::string>& base_model_name_or_path) {
  CKPT_ASSIGN_OR_RETURN(Analysis analysis, analyse(tensors, params));
  if (analysis.adapters.empty()) return invalid_input("no LoRA adapter (lora_A/lora_B) tensors");
  LoraExport out;
  out.base = base_tensors(tensors, analysis, params, false);
  std::set<std::string> target_modules;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const KeyInfo& key = analysis.keys[i];
    if (key.factor == Factor::kNone) continue;
    LogicalTensor tensor = tensors[i];
    tensor.name = std::string(kPeftPrefix) + key.module +
                  (key.factor == Factor::kA ? ".lora_A.weight" : ".lora_B.weight");
    tensor.lora.reset();
    out.adapter.push_back(std::move(tensor));
    target_modules.insert(std::string(split_dots(key.module).back()));
  }
  out.adapter_config_json =
      adapter_config(params, analysis.rank, target_modules, base_model_name_or_path);
  return out;
}

}  // namespace ckptstream
