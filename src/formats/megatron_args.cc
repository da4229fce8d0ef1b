#include "formats/megatron_args.h"

#include <simdjson.h>

#include <charconv>
#include <map>

#include "io/input_file.h"
#include "pickle/value.h"

namespace ckptstream {
namespace {

// The Namespace's field `key`: absent and None are "not set".
const pickle::Value* field(const pickle::Value& args, std::string_view key) {
  auto value = args.attr(key);
  if (!value || value->is(pickle::Kind::kNone)) return nullptr;
  return value;
}

Status read_int(const pickle::Value& args, std::string_view key, std::int64_t& out,
                const std::string& where, bool required) {
  const auto* value = field(args, key);
  if (!value) {
    if (required) return invalid_input(where + ": args has no " + std::string(key));
    return {};
  }
  auto number = value->as_int();
  if (!number) return invalid_input(where + ": args." + std::string(key) + " is not an integer");
  out = *number;
  return {};
}

Status read_optional_int(const pickle::Value& args, std::string_view key,
                         std::optional<std::int64_t>& out, const std::string& where) {
  std::int64_t value = 0;
  if (!field(args, key)) return {};
  CKPT_TRY(read_int(args, key, value, where, true));
  out = value;
  return {};
}

bool read_bool(const pickle::Value& args, std::string_view key) {
  const auto* value = field(args, key);
  return value && value->as_bool().value_or(false);
}

// The model sizes of a run configuration, by megatron-core's TransformerConfig names.
Result<MegatronArgs> sizes_from(const std::map<std::string, std::int64_t>& values,
                                const std::string& where) {
  MegatronArgs out;
  auto get = [&](const char* key, std::int64_t& field) {
    auto it = values.find(key);
    if (it != values.end()) field = it->second;
  };
  get("num_layers", out.num_layers);
  get("hidden_size", out.hidden_size);
  get("num_attention_heads", out.num_attention_heads);
  get("num_query_groups", out.num_query_groups);
  get("kv_channels", out.kv_channels);
  get("ffn_hidden_size", out.ffn_hidden_size);
  get("num_moe_experts", out.num_experts);
  get("moe_ffn_hidden_size", out.moe_ffn_hidden_size);
  get("mtp_num_layers", out.mtp_num_layers);
  get("tensor_model_parallel_size", out.tp);
  get("pipeline_model_parallel_size", out.pp);
  get("expert_model_parallel_size", out.ep);
  if (out.num_layers <= 0 && out.hidden_size <= 0)
    return invalid_input(where + ": no num_layers or hidden_size (not a model configuration)");
  return out;
}

}  // namespace

Result<MegatronArgs> read_transformer_config_json(const std::filesystem::path& path) {
  CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(path, 16u << 20));
  simdjson::dom::parser parser;
  simdjson::dom::object doc;
  if (parser.parse(text).get(doc)) return invalid_input(path.string() + ": not a JSON object");
  std::map<std::string, std::int64_t> values;
  for (auto field : doc) {
    std::int64_t number = 0;
    if (!field.value.get(number)) values[std::string(field.key)] = number;
  }
  return sizes_from(values, path.string());
}

Result<MegatronArgs> read_run_config_yaml(const std::filesystem::path& path) {
  CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(path, 16u << 20));
  std::map<std::string, std::int64_t> values;
  bool in_model = false;
  std::size_t at = 0;
  while (at < text.size()) {
    auto end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + at, end - at);
    at = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    if (line.front() != ' ') {  // a top-level key: the model section starts or ends
      in_model = line.substr(0, 6) == "model:";
      continue;
    }
    // "  key: 123" directly under model: (deeper nesting is another object's)
    if (!in_model || line.size() < 3 || line[1] != ' ' || line[2] == ' ') continue;
    auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string key(line.substr(2, colon - 2));
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    std::int64_t number = 0;
    auto [ptr, error] = std::from_chars(value.data(), value.data() + value.size(), number);
    if (error == std::errc() && ptr == value.data() + value.size()) values[key] = number;
  }
  return sizes_from(values, path.string());
}

Result<MegatronArgs> read_megatron_args(const pickle::Value& args, const std::string& where) {
  if (!args.is(pickle::Kind::kObject) && !args.is(pickle::Kind::kDict))
    return invalid_input(where + ": args is not an argparse.Namespace");
  MegatronArgs out;
  CKPT_TRY(read_int(args, "tensor_model_parallel_size", out.tp, where, true));
  CKPT_TRY(read_int(args, "pipeline_model_parallel_size", out.pp, where, true));
  CKPT_TRY(read_int(args, "expert_model_parallel_size", out.ep, where, false));
  out.etp = out.tp;
  CKPT_TRY(read_int(args, "expert_tensor_parallel_size", out.etp, where, false));
  CKPT_TRY(read_int(args, "virtual_pipeline_model_parallel_size", out.vpp, where, false));
  CKPT_TRY(
      read_optional_int(args, "decoder_first_pipeline_num_layers", out.first_stage_layers, where));
  CKPT_TRY(
      read_optional_int(args, "decoder_last_pipeline_num_layers", out.last_stage_layers, where));
  out.account_for_embedding_in_pipeline_split =
      read_bool(args, "account_for_embedding_in_pipeline_split");
  out.account_for_loss_in_pipeline_split = read_bool(args, "account_for_loss_in_pipeline_split");
  if (const auto* layout = field(args, "pipeline_model_parallel_layout")) {
    auto text = layout->as_string();
    out.pipeline_layout = text ? std::string(*text) : std::string(layout->class_name());
  }
  if (const auto* impl = field(args, "transformer_impl")) {
    auto text = impl->as_string();
    out.local_spec = text && *text == "local";
  }
  CKPT_TRY(read_int(args, "num_layers", out.num_layers, where, true));
  CKPT_TRY(read_int(args, "hidden_size", out.hidden_size, where, true));
  CKPT_TRY(read_int(args, "num_attention_heads", out.num_attention_heads, where, true));
  out.num_query_groups = out.num_attention_heads;
  if (read_bool(args, "group_query_attention"))
    CKPT_TRY(read_int(args, "num_query_groups", out.num_query_groups, where, true));
  out.kv_channels = out.num_attention_heads ? out.hidden_size / out.num_attention_heads : 0;
  CKPT_TRY(read_int(args, "kv_channels", out.kv_channels, where, false));
  CKPT_TRY(read_int(args, "ffn_hidden_size", out.ffn_hidden_size, where, false));
  CKPT_TRY(read_int(args, "num_experts", out.num_experts, where, false));
  CKPT_TRY(read_int(args, "moe_ffn_hidden_size", out.moe_ffn_hidden_size, where, false));
  CKPT_TRY(read_int(args, "padded_vocab_size", out.padded_vocab_size, where, false));
  CKPT_TRY(read_int(args, "mtp_num_layers", out.mtp_num_layers, where, false));
  out.gated_mlp = read_bool(args, "swiglu");
  out.untied_output = read_bool(args, "untie_embeddings_and_output_weights");
  if (out.tp < 1 || out.pp < 1 || out.ep < 1 || out.etp < 1 || out.vpp < 0 || out.num_layers < 1)
    return invalid_input(where + ": args give parallel sizes TP " + std::to_string(out.tp) +
                         ", PP " + std::to_string(out.pp) + ", EP " + std::to_string(out.ep) +
                         ", ETP " + std::to_string(out.etp) + " and " +
                         std::to_string(out.num_layers) + " layers");
  return out;
}

Result<std::int64_t> megatron_layer_offset(const MegatronArgs& args, std::int64_t pp_rank,
                                           std::int64_t vp_stage) {
  if (!args.pipeline_layout.empty())
    return unsupported("pipeline_model_parallel_layout '" + args.pipeline_layout +
                       "' is not supported yet (a torch_dist checkpoint of the same run is)");
  const std::int64_t layers = args.num_layers;
  const std::int64_t stages = args.pp;
  const std::int64_t chunks = args.vpp > 0 ? args.vpp : 1;
  auto uneven_error = [&] {
    return invalid_input("args: " + std::to_string(layers) + " layers do not split over " +
                         std::to_string(stages) + " pipeline stages x " + std::to_string(chunks) +
                         " virtual chunks as the first/last stage sizes say");
  };
  if (args.first_stage_layers || args.last_stage_layers) {
    std::int64_t first = args.first_stage_layers.value_or(0);
    std::int64_t last = args.last_stage_layers.value_or(0);
    std::int64_t middle_stages =
        stages - (args.first_stage_layers ? 1 : 0) - (args.last_stage_layers ? 1 : 0);
    std::int64_t middle_layers = layers - first - last;
    std::int64_t mid_rank = pp_rank - (args.first_stage_layers ? 1 : 0);
    if (middle_layers < 0 || (middle_stages > 0 && middle_layers % (middle_stages * chunks)) ||
        (middle_stages == 0 && middle_layers != 0) || first % chunks || last % chunks)
      return uneven_error();
    std::int64_t per_mid_stage_chunk = middle_stages ? middle_layers / middle_stages / chunks : 0;
    std::int64_t total_per_chunk = first / chunks + middle_layers / chunks + last / chunks;
    if (pp_rank == 0 && args.first_stage_layers) return vp_stage * total_per_chunk;
    return vp_stage * total_per_chunk + first / chunks + mid_rank * per_mid_stage_chunk;
  }
  std::int64_t counted = layers + (args.account_for_embedding_in_pipeline_split ? 1 : 0) +
                         (args.account_for_loss_in_pipeline_split ? 1 : 0);
  if (counted % (stages * chunks)) return uneven_error();
  std::int64_t per_stage = counted / stages;
  std::int64_t offset = vp_stage * (counted / chunks) + pp_rank * (per_stage / chunks);
  if (args.account_for_embedding_in_pipeline_split && (pp_rank != 0 || vp_stage != 0)) --offset;
  return offset;
}

}  // namespace ckptstream
