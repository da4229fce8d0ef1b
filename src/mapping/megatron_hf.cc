#include "mapping/megatron_hf.h"

#include <algorithm>
#include <array>
#include <map>
#include <set>

#include "formats/megatron_checkpoint.h"
#include "mapping/experts.h"
#include "plan/views.h"

namespace ckptstream {
namespace {

enum class Op { kCopy, kQkv, kGateUp };

// One parameter: its megatron-core name (below "decoder.layers.{i}." for layer rules) and the
// Hugging Face names it becomes (below "model.layers.{i}."). In HF names, {moe} is the family's
// MoE block, {eg} {eu} {ed} its expert projections, {shared} its shared-expert module, {qnorm} its
// query norm; {e} is the expert number.
struct Rule {
  std::string_view mcore;
  Op op;
  std::array<std::string_view, 3> hf;
};

constexpr Rule kLayerRules[] = {
    {"input_layernorm.weight", Op::kCopy, {"input_layernorm.weight"}},
    {"self_attention.linear_qkv.layer_norm_weight", Op::kCopy, {"input_layernorm.weight"}},
    {"self_attention.linear_qkv.weight",
     Op::kQkv,
     {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"}},
    {"self_attention.linear_qkv.bias",
     Op::kQkv,
     {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}},
    {"self_attention.q_layernorm.weight", Op::kCopy, {"{qnorm}"}},
    {"self_attention.k_layernorm.weight", Op::kCopy, {"self_attn.k_norm.weight"}},
    {"self_attention.linear_proj.weight", Op::kCopy, {"self_attn.o_proj.weight"}},
    // Multi-latent attention (DeepSeek-V2/V3, Kimi-K2): copied as they are (§3g).
    {"self_attention.linear_q_down_proj.weight", Op::kCopy, {"self_attn.q_a_proj.weight"}},
    {"self_attention.linear_q_up_proj.layer_norm_weight",
     Op::kCopy,
     {"self_attn.q_a_layernorm.weight"}},
    {"self_attention.linear_q_up_proj.weight", Op::kCopy, {"self_attn.q_b_proj.weight"}},
    {"self_attention.linear_q_proj.weight", Op::kCopy, {"self_attn.q_proj.weight"}},
    {"self_attention.linear_kv_down_proj.weight",
     Op::kCopy,
     {"self_attn.kv_a_proj_with_mqa.weight"}},
    {"self_attention.linear_kv_up_proj.layer_norm_weight",
     Op::kCopy,
     {"self_attn.kv_a_layernorm.weight"}},
    {"self_attention.kv_layernorm.weight", Op::kCopy, {"self_attn.kv_a_layernorm.weight"}},
    {"self_attention.linear_kv_up_proj.weight", Op::kCopy, {"self_attn.kv_b_proj.weight"}},
    {"pre_mlp_layernorm.weight", Op::kCopy, {"post_attention_layernorm.weight"}},
    {"mlp.linear_fc1.layer_norm_weight", Op::kCopy, {"post_attention_layernorm.weight"}},
    {"mlp.linear_fc1.weight", Op::kGateUp, {"mlp.gate_proj.weight", "mlp.up_proj.weight"}},
    {"mlp.linear_fc2.weight", Op::kCopy, {"mlp.down_proj.weight"}},
    {"mlp.router.weight", Op::kCopy, {"{moe}.gate.weight"}},
    {"mlp.router.expert_bias", Op::kCopy, {"{moe}.gate.e_score_correction_bias"}},
    {"mlp.shared_experts.linear_fc1.weight",
     Op::kGateUp,
     {"mlp.{shared}.gate_proj.weight", "mlp.{shared}.up_proj.weight"}},
    {"mlp.shared_experts.linear_fc2.weight", Op::kCopy, {"mlp.{shared}.down_proj.weight"}},
    {"mlp.shared_experts.gate_weight", Op::kCopy, {"mlp.shared_expert_gate.weight"}},
    {"mlp.experts.{e}.linear_fc1.weight",
     Op::kGateUp,
     {"{moe}.experts.{e}.{eg}.weight", "{moe}.experts.{e}.{eu}.weight"}},
    {"mlp.experts.{e}.linear_fc2.weight", Op::kCopy, {"{moe}.experts.{e}.{ed}.weight"}},
};

// DeepSeek's multi-token-prediction layers (mtp.layers.{k}.*) become model.layers.{L+k}.*: their
// own norms and projection, then an ordinary layer under mtp_model_layer (older megatron-core:
// transformer_layer).
constexpr Rule kMtpRules[] = {
    {"enorm.weight", Op::kCopy, {"enorm.weight"}},
    {"hnorm.weight", Op::kCopy, {"hnorm.weight"}},
    {"eh_proj.weight", Op::kCopy, {"eh_proj.weight"}},
    {"final_layernorm.weight", Op::kCopy, {"shared_head.norm.weight"}},
};

struct Family {
  std::string_view name;
  std::array<std::string_view, 4> model_types;
  std::string_view moe = "mlp";
  std::array<std::string_view, 3> expert = {"gate_proj", "up_proj", "down_proj"};
  std::string_view shared = "shared_experts";
  bool mla = false;     // multi-latent attention; MTP layers carry copies of embedding and head
  bool vision = false;  // a vision-language model: language_model.* and vision_model.*
};

constexpr Family kFamilies[] = {
    {"llama", {"llama", "mistral"}},
    {"qwen2", {"qwen2"}},
    {"qwen3", {"qwen3"}},
    {"mixtral", {"mixtral"}, "block_sparse_moe", {"w1", "w3", "w2"}},
    {"qwen2_moe", {"qwen2_moe"}, "mlp", {"gate_proj", "up_proj", "down_proj"}, "shared_expert"},
    {"qwen3_moe", {"qwen3_moe"}},
    {"deepseek",
     {"deepseek_v3", "deepseek_v2", "kimi_k2"},
     "mlp",
     {"gate_proj", "up_proj", "down_proj"},
     "shared_experts",
     true},
    {"glm4_moe", {"glm4_moe"}},  // GLM-4.5: DeepSeek's MoE names, grouped-query attention
    {"qwen2_5_vl",
     {"qwen2_5_vl"},
     "mlp",
     {"gate_proj", "up_proj", "down_proj"},
     "shared_experts",
     false,
     true},
};

// A vision tower's parameters (below "vision_model."; layer rules below "decoder.layers.{i}."),
// and the Hugging Face names they become (below "visual."; layer rules below "blocks.{i}.").
// kQkv here is the vision attention's fused qkv, heads interleaved [q, k, v] per head, which
// Hugging Face keeps as three blocks [q; k; v].
constexpr Rule kVisionRules[] = {
    {"patch_embed.proj.weight", Op::kCopy, {"patch_embed.proj.weight"}},
    {"decoder.final_layernorm.weight", Op::kCopy, {"merger.ln_q.weight"}},
    {"projection.encoder.linear_fc1.weight", Op::kCopy, {"merger.mlp.0.weight"}},
    {"projection.encoder.linear_fc1.bias", Op::kCopy, {"merger.mlp.0.bias"}},
    {"projection.encoder.linear_fc2.weight", Op::kCopy, {"merger.mlp.2.weight"}},
    {"projection.encoder.linear_fc2.bias", Op::kCopy, {"merger.mlp.2.bias"}},
};
constexpr Rule kVisionLayerRules[] = {
    {"input_layernorm.weight", Op::kCopy, {"norm1.weight"}},
    {"self_attention.linear_qkv.layer_norm_weight", Op::kCopy, {"norm1.weight"}},
    {"pre_mlp_layernorm.weight", Op::kCopy, {"norm2.weight"}},
    {"mlp.linear_fc1.layer_norm_weight", Op::kCopy, {"norm2.weight"}},
    {"self_attention.linear_qkv.weight", Op::kQkv, {"attn.qkv.weight"}},
    {"self_attention.linear_qkv.bias", Op::kQkv, {"attn.qkv.bias"}},
    {"self_attention.linear_proj.weight", Op::kCopy, {"attn.proj.weight"}},
    {"self_attention.linear_proj.bias", Op::kCopy, {"attn.proj.bias"}},
    {"mlp.linear_fc1.weight", Op::kGateUp, {"mlp.gate_proj.weight", "mlp.up_proj.weight"}},
    {"mlp.linear_fc1.bias", Op::kGateUp, {"mlp.gate_proj.bias", "mlp.up_proj.bias"}},
    {"mlp.linear_fc2.weight", Op::kCopy, {"mlp.down_proj.weight"}},
    {"mlp.linear_fc2.bias", Op::kCopy, {"mlp.down_proj.bias"}},
};

const Family* family_of(const std::string& model_type) {
  for (const auto& f : kFamilies)
    for (auto type : f.model_types)
      if (!type.empty() && type == model_type) return &f;
  return nullptr;
}

std::string replace_all(std::string text, std::string_view from, std::string_view to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

// A rule's Hugging Face name pattern filled in for the family (and expert `expert`); `packed`:
// the MoE block named as transformers 5 holds packed experts in memory.
std::string fill_hf_name(const Family& family, std::string_view pattern,
                         std::optional<std::int64_t> expert, bool packed) {
  std::string text(pattern);
  text = replace_all(std::move(text), "{moe}", packed ? "mlp" : family.moe);
  text = replace_all(std::move(text), "{eg}", family.expert[0]);
  text = replace_all(std::move(text), "{eu}", family.expert[1]);
  text = replace_all(std::move(text), "{ed}", family.expert[2]);
  text = replace_all(std::move(text), "{shared}", family.shared);
  text = replace_all(std::move(text), "{qnorm}",
                     family.mla ? "self_attn.q_a_layernorm.weight" : "self_attn.q_norm.weight");
  if (expert) text = replace_all(std::move(text), "{e}", std::to_string(*expert));
  return text;
}

class Mapper {
 public:
  Mapper(const Family& family, const HfConfig& config, const MegatronMapOptions& options)
      : family_(family), config_(config), text_(config.language()), options_(options) {}

  // Maps one canonical tensor; false when no rule knows it.
  Result<bool> map(LogicalTensor tensor) {
    if (family_.vision && tensor.name.starts_with("language_model.")) {
      tensor.name.erase(0, 15);  // the language model: named as a text-only model's
      return map(std::move(tensor));
    }
    if (family_.vision && tensor.name.starts_with("vision_model.")) {
      has_vision_ = true;
      return vision_param(std::move(tensor));
    }
    std::string_view name = tensor.name;
    if (name == "embedding.word_embeddings.weight")
      return vocab_rows(std::move(tensor), "model.embed_tokens.weight");
    if (name == "output_layer.weight") return output_layer(std::move(tensor));
    if (name == "output_layer.bias" && options_.value_model)
      return add(std::move(tensor), "score.bias");
    if (name == "decoder.final_layernorm.weight")
      return add(std::move(tensor), "model.norm.weight");
    if (name.starts_with("decoder.layers.")) {
      auto layer = megatron_key_number(name.substr(15));
      if (!layer) return false;
      return layer_param(std::move(tensor), layer->first, std::string(layer->second));
    }
    if (name.starts_with("mtp.layers.")) {
      auto k = megatron_key_number(name.substr(11));
      if (!k || !text_.num_hidden_layers) return false;
      std::int64_t layer = *text_.num_hidden_layers + k->first;
      mtp_layers_.insert(layer);
      std::string rest(k->second);
      for (std::string_view inner : {"mtp_model_layer.", "transformer_layer."})
        if (rest.starts_with(inner))
          return layer_param(std::move(tensor), layer, rest.substr(inner.size()));
      for (const auto& rule : kMtpRules)
        if (rest == rule.mcore) return add(std::move(tensor), layer_name(layer, rule.hf[0]));
      return false;
    }
    return false;
  }

  std::vector<LogicalTensor>& outputs() { return outputs_; }
  bool has_vision() const { return has_vision_; }
  std::int64_t trimmed_rows() const { return trimmed_; }

  // transformers' token-classification head (score) has a bias; Megatron value heads usually do
  // not (mbridge's make_value_model, verl's critic): a zero bias computes the same values and
  // loads with no missing key. True when it was added.
  bool add_zero_value_bias() {
    const LogicalTensor* score = nullptr;
    for (const auto& t : outputs_) {
      if (t.name == "score.bias") return false;
      if (t.name == "score.weight") score = &t;
    }
    if (!score || score->shape.empty()) return false;
    outputs_.push_back(zeros("score.bias", score->source_dtype, Shape{score->shape[0]}));
    return true;
  }
  const std::set<std::int64_t>& mtp_layers() const { return mtp_layers_; }

  // DeepSeek's checkpoints give each MTP layer its own copies of the embedding and the output
  // head (model.layers.{L+k}.embed_tokens, .shared_head.head); megatron-core shares the model's.
  void add_mtp_copies() {
    if (!family_.mla) return;
    const LogicalTensor* embed = nullptr;
    const LogicalTensor* head = nullptr;
    for (const auto& t : outputs_) {
      if (t.name == "model.embed_tokens.weight") embed = &t;
      if (t.name == "lm_head.weight") head = &t;
    }
    if (!head) head = embed;  // tied
    std::vector<LogicalTensor> copies;
    for (std::int64_t layer : mtp_layers_) {
      for (auto [source, name] :
           {std::pair{embed, "embed_tokens.weight"}, std::pair{head, "shared_head.head.weight"}}) {
        if (!source) continue;
        LogicalTensor copy = *source;
        copy.name = layer_name(layer, name);
        copies.push_back(std::move(copy));
      }
    }
    for (auto& c : copies) outputs_.push_back(std::move(c));
  }

 private:
  static std::string layer_name(std::int64_t layer, std::string_view hf) {
    return "model.layers." + std::to_string(layer) + "." + std::string(hf);
  }

  std::string fill(std::string_view pattern, std::optional<std::int64_t> expert) const {
    // In memory (packed experts) transformers 5 calls every MoE block "mlp" (Mixtral's too).
    return fill_hf_name(family_, pattern, expert, options_.packed_experts);
  }

  Result<bool> layer_param(LogicalTensor tensor, std::int64_t layer, std::string rest) {
    std::optional<std::int64_t> expert;
    constexpr std::string_view kExperts = "mlp.experts.";
    if (rest.starts_with(kExperts)) {
      if (auto e = megatron_key_number(std::string_view(rest).substr(kExperts.size()))) {
        expert = e->first;
        std::string param(e->second);  // e views `rest`, which is about to change
        rest = std::string(kExperts) + "{e}." + param;
        if (options_.packed_experts &&
            (param == "linear_fc1.weight" || param == "linear_fc2.weight")) {
          // Packed as transformers 5 holds them: fc1 [2F, H] is already [gate; up].
          auto& slot = packed_[{layer, param == "linear_fc1.weight" ? 0 : 1}];
          return slot.emplace(*expert, std::move(tensor)).second;
        }
      }
    }
    for (const auto& rule : kLayerRules) {
      if (rest != rule.mcore) continue;
      std::array<std::string, 3> names;
      for (std::size_t i = 0; i < 3; ++i)
        if (!rule.hf[i].empty()) names[i] = layer_name(layer, fill(rule.hf[i], expert));
      switch (rule.op) {
        case Op::kCopy:
          return add(std::move(tensor), names[0]);
        case Op::kQkv:
          return split_qkv(tensor, names);
        case Op::kGateUp:
          return split_gate_up(tensor, names);
      }
    }
    return false;
  }

  Result<bool> vision_param(LogicalTensor tensor) {
    std::string rest = tensor.name.substr(13);
    for (const auto& rule : kVisionRules)
      if (rest == rule.mcore) return add(std::move(tensor), "visual." + std::string(rule.hf[0]));
    if (!rest.starts_with("decoder.layers.")) return false;
    auto block = megatron_key_number(std::string_view(rest).substr(15));
    if (!block) return false;
    std::string prefix = "visual.blocks." + std::to_string(block->first) + ".";
    for (const auto& rule : kVisionLayerRules) {
      if (block->second != rule.mcore) continue;
      std::array<std::string, 3> names;
      for (std::size_t i = 0; i < 3; ++i)
        if (!rule.hf[i].empty()) names[i] = prefix + std::string(rule.hf[i]);
      switch (rule.op) {
        case Op::kCopy:
          return add(std::move(tensor), names[0]);
        case Op::kQkv:
          return vision_qkv(tensor, names[0]);
        case Op::kGateUp:
          return split_gate_up(tensor, names);
      }
    }
    return false;
  }

  // [heads * 3 * d, ...] with [q, k, v] per head -> [q of all heads; k; v].
  Result<bool> vision_qkv(const LogicalTensor& t, const std::string& name) {
    std::int64_t heads = config_.vision_config ? config_.vision_config->num_heads.value_or(0) : 0;
    if (heads <= 0 || t.shape.empty() || t.shape[0] % (3 * heads))
      return shape_error(t, "vision_config's num_heads " + std::to_string(heads) +
                                " does not split the fused qkv into heads of [q, k, v]");
    std::int64_t sizes[] = {heads, 3, t.shape[0] / (3 * heads)};
    CKPT_ASSIGN_OR_RETURN(LogicalTensor grouped, unflatten(t, 0, sizes));
    std::vector<LogicalTensor> parts;
    for (std::int64_t j = 0; j < 3; ++j) {
      CKPT_ASSIGN_OR_RETURN(LogicalTensor part, flatten(narrow(grouped, 1, j, 1), 0, 2));
      parts.push_back(std::move(part));
    }
    CKPT_ASSIGN_OR_RETURN(LogicalTensor qkv, concat(parts, 0, name));
    outputs_.push_back(std::move(qkv));
    return true;
  }

 public:
  // --keep-packed-experts: each layer's experts as one tensor per projection, named as
  // transformers 5 holds them in memory (model.layers.{i}.mlp.experts.gate_up_proj [E, 2F, H],
  // ...down_proj [E, H, F]; Mixtral's block is "mlp" there too). Every expert must be there.
  Status add_packed_experts() {
    for (auto& [key, experts] : packed_) {
      auto [layer, which] = key;
      std::string name =
          layer_name(layer, which == 0 ? "mlp.experts.gate_up_proj" : "mlp.experts.down_proj");
      std::vector<LogicalTensor> parts;
      std::int64_t next = 0;
      for (auto& [e, t] : experts) {
        if (e != next)
          return invalid_input("'" + name + "': expert " + std::to_string(next) +
                               " is missing from the checkpoint");
        ++next;
        std::int64_t sizes[] = {1, t.shape.empty() ? 0 : t.shape[0]};
        CKPT_ASSIGN_OR_RETURN(LogicalTensor one, unflatten(t, 0, sizes));
        parts.push_back(std::move(one));
      }
      CKPT_ASSIGN_OR_RETURN(LogicalTensor packed, concat(parts, 0, name));
      outputs_.push_back(std::move(packed));
    }
    return {};
  }
  bool packed() const { return !packed_.empty(); }

  // Vision weights from elsewhere (--vit_dir): Hugging Face names already, "visual.*" (or
  // transformers 5's "model.visual.*").
  void add_vision_weights(const SourceTensors& weights, std::size_t first_input) {
    for (auto t : weights.tensors) {
      std::string_view name = t.name;
      if (name.starts_with("model.visual.")) t.name.erase(0, 6);
      if (!t.name.starts_with("visual.")) continue;
      for (auto& f : t.fragments) f.source.input += first_input;
      outputs_.push_back(std::move(t));
    }
  }

 private:
  Result<bool> add(LogicalTensor tensor, std::string hf_name) {
    tensor.name = std::move(hf_name);
    outputs_.push_back(std::move(tensor));
    return true;
  }

  Error shape_error(const LogicalTensor& t, const std::string& what) const {
    return invalid_input("'" + t.name + "' " + shape_text(t.shape) + ": " + what + " (" +
                         config_.path.string() + ")");
  }

  // [ng * (nh/ng + 2) * d, ...] -> q [nh*d, ...], k [ng*d, ...], v [ng*d, ...] (§3b).
  Result<bool> split_qkv(const LogicalTensor& t, const std::array<std::string, 3>& names) {
    std::int64_t heads = text_.num_attention_heads.value_or(0);
    std::int64_t groups = text_.num_key_value_heads.value_or(heads);
    std::int64_t hidden = text_.hidden_size.value_or(0);
    std::int64_t dim = text_.head_dim.value_or(heads ? hidden / heads : 0);
    if (heads <= 0 || groups <= 0 || dim <= 0 || heads % groups)
      return shape_error(t, "config.json gives " + std::to_string(heads) + " heads, " +
                                std::to_string(groups) + " key-value heads, head_dim " +
                                std::to_string(dim) + ": not a fused QKV layout");
    std::int64_t per_group = heads / groups;
    if (t.shape.empty() || t.shape[0] != groups * (per_group + 2) * dim)
      return shape_error(t, "config.json's " + std::to_string(heads) + " heads in " +
                                std::to_string(groups) + " groups of head_dim " +
                                std::to_string(dim) + " need " +
                                std::to_string(groups * (per_group + 2) * dim) + " rows");
    std::int64_t sizes[] = {groups, per_group + 2, dim};
    CKPT_ASSIGN_OR_RETURN(LogicalTensor grouped, unflatten(t, 0, sizes));
    const std::int64_t starts[] = {0, per_group, per_group + 1};
    const std::int64_t counts[] = {per_group, 1, 1};
    for (int i = 0; i < 3; ++i) {
      LogicalTensor part = narrow(grouped, 1, starts[i], counts[i]);
      CKPT_ASSIGN_OR_RETURN(part, flatten(part, 0, 2));
      part.name = names[i];
      outputs_.push_back(std::move(part));
    }
    return true;
  }

  // [gate; up] -> gate, up (§3c).
  Result<bool> split_gate_up(const LogicalTensor& t, const std::array<std::string, 3>& names) {
    if (t.shape.empty() || t.shape[0] % 2)
      return shape_error(t, "an odd number of rows, not [gate; up] halves");
    std::int64_t half = t.shape[0] / 2;
    for (int i = 0; i < 2; ++i) {
      LogicalTensor part = narrow(t, 0, i * half, half);
      part.name = names[i];
      outputs_.push_back(std::move(part));
    }
    return true;
  }

  // Megatron pads the vocabulary to a multiple of (divisor x TP): rows past config.vocab_size
  // are padding (§3d).
  Result<bool> vocab_rows(LogicalTensor t, std::string hf_name) {
    if (t.shape.size() != 2) return shape_error(t, "not a [vocab, hidden] matrix");
    if (text_.vocab_size) {
      std::int64_t vocab = *text_.vocab_size;
      if (t.shape[0] < vocab)
        return shape_error(t, "fewer rows than config.json's vocab_size " + std::to_string(vocab));
      if (t.shape[0] > vocab) {
        trimmed_ = t.shape[0] - vocab;
        t = narrow(t, 0, 0, vocab);
      }
    }
    return add(std::move(t), std::move(hf_name));
  }

  Result<bool> output_layer(LogicalTensor t) {
    bool one_row = t.shape.size() == 2 && t.shape[0] == 1;
    if (options_.value_model) {
      if (!one_row)
        return shape_error(t, "--is-value-model, but the output layer is not a one-row value head");
      return add(std::move(t), "score.weight");
    }
    if (one_row)
      return shape_error(t, "a one-row output layer is a value head: say --is-value-model");
    return vocab_rows(std::move(t), "lm_head.weight");
  }

  const Family& family_;
  const HfConfig& config_;
  const HfTextConfig& text_;
  MegatronMapOptions options_;
  std::vector<LogicalTensor> outputs_;
  std::set<std::int64_t> mtp_layers_;  // model.layers numbers of the MTP layers met
  bool has_vision_ = false;
  // --keep-packed-experts: (layer, 0 for fc1 / 1 for fc2) -> expert -> tensor.
  std::map<std::pair<std::int64_t, int>, std::map<std::int64_t, LogicalTensor>> packed_;
  std::int64_t trimmed_ = 0;  // vocabulary padding rows dropped
};

std::string list_names(const std::vector<std::string>& names) {
  std::string text;
  for (std::size_t i = 0; i < names.size() && i < 12; ++i) text += (i ? ", " : "") + names[i];
  if (names.size() > 12) text += ", ... (" + std::to_string(names.size()) + " in all)";
  return text;
}

// The names config.json's architecture needs that `have` lacks.
std::vector<std::string> missing_names(const Family& family, const HfConfig& config,
                                       const MegatronMapOptions& options,
                                       const std::set<std::int64_t>& mtp_layers,
                                       const std::set<std::string>& have) {
  const HfTextConfig& text = config.language();
  std::vector<std::string> missing;
  auto need = [&](const std::string& name) {
    if (!have.count(name)) missing.push_back(name);
  };
  need("model.embed_tokens.weight");
  need("model.norm.weight");
  if (options.value_model)
    need("score.weight");
  else if (!config.tie_word_embeddings.value_or(false))
    need("lm_head.weight");
  if (family.vision && config.vision_config) {
    for (auto name : {"patch_embed.proj.weight", "merger.ln_q.weight", "merger.mlp.0.weight",
                      "merger.mlp.2.weight"})
      need("visual." + std::string(name));
    for (std::int64_t b = 0; b < config.vision_config->depth.value_or(0); ++b)
      for (auto name : {"norm1.weight", "norm2.weight", "attn.qkv.weight", "attn.proj.weight",
                        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"})
        need("visual.blocks." + std::to_string(b) + "." + name);
  }
  std::int64_t layers =
      text.num_hidden_layers.value_or(0) + static_cast<std::int64_t>(mtp_layers.size());
  std::int64_t experts = text.num_experts.value_or(0);
  for (std::int64_t i = 0; i < layers; ++i) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    need(p + "input_layernorm.weight");
    need(p + "post_attention_layernorm.weight");
    need(p + "self_attn.o_proj.weight");
    if (family.mla) {
      need(p + "self_attn.kv_a_proj_with_mqa.weight");
      need(p + "self_attn.kv_b_proj.weight");
    } else {
      for (auto proj : {"q_proj", "k_proj", "v_proj"}) need(p + "self_attn." + proj + ".weight");
    }
    if (mtp_layers.count(i))
      for (auto name :
           {"enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight"})
        need(p + name);
    std::string moe = p + std::string(options.packed_experts ? "mlp" : family.moe) + ".";
    if (experts > 0 && have.count(moe + "gate.weight") && options.packed_experts) {
      need(p + "mlp.experts.gate_up_proj");
      need(p + "mlp.experts.down_proj");
    } else if (experts > 0 && have.count(moe + "gate.weight")) {
      for (std::int64_t e = 0; e < experts; ++e)
        for (auto proj : family.expert)
          need(moe + "experts." + std::to_string(e) + "." + std::string(proj) + ".weight");
    } else {
      for (auto proj : {"gate_proj", "up_proj", "down_proj"}) need(p + "mlp." + proj + ".weight");
    }
  }
  return missing;
}

// The reverse of the table: Hugging Face tensors -> megatron-core's canonical global tensors
// (the names formats/megatron_checkpoint.h gives: one tensor per layer and per expert, the
// norms under the local spec's module names). Each rule is run backwards: its Hugging Face
// tensors, all present, become its megatron-core tensor by the inverse view (concat for gate_up,
// the per-group interleave for qkv). The fused Transformer Engine norm names are left to the
// writer, which knows the spec.
class ReverseMapper {
 public:
  ReverseMapper(const Family& family, const HfConfig& config, std::int64_t padded_vocab)
      : family_(family), config_(config), text_(config.language()), padded_vocab_(padded_vocab) {}

  Status run(std::vector<LogicalTensor> hf) {
    for (auto& t : hf) {
      // transformers 5 holds a vision-language model as model.visual.* and
      // model.language_model.*; its checkpoints on the hub say visual.* and model.*.
      if (t.name.starts_with("model.visual.")) t.name.erase(0, 6);
      if (t.name.starts_with("model.language_model.")) t.name.erase(6, 15);
      std::string name = t.name;
      if (!by_name_.emplace(name, std::move(t)).second)
        return invalid_input("'" + name + "' appears twice in the Hugging Face model");
    }
    if (auto e = take("model.embed_tokens.weight"))
      CKPT_TRY(padded(std::move(*e), "embedding.word_embeddings.weight"));
    if (auto n = take("model.norm.weight")) add(std::move(*n), "decoder.final_layernorm.weight");
    // A value model (verl's critic, a token-classification model with one label): its score
    // head is Megatron's one-row output layer, which has no bias and no vocabulary padding.
    if (auto score = take("score.weight")) {
      value_model_ = true;
      add(std::move(*score), "output_layer.weight");
      if (take("score.bias"))
        notes_.push_back(
            "score.bias left out: a Megatron value head has no bias (merge writes "
            "zeros there)");
    }
    if (auto head = take("lm_head.weight")) {
      if (config_.tie_word_embeddings.value_or(false))
        notes_.push_back("lm_head.weight left out: config.json ties it to the embedding");
      else
        CKPT_TRY(padded(std::move(*head), "output_layer.weight"));
    }
    std::int64_t layers = text_.num_hidden_layers.value_or(0);
    for (std::int64_t n = 0; n <= last_layer(); ++n) {
      std::string prefix;
      if (n < layers) {
        prefix = "decoder.layers." + std::to_string(n) + ".";
      } else if (family_.mla) {
        std::string mtp = "mtp.layers." + std::to_string(n - layers) + ".";
        mtp_layers_.insert(n);
        for (const auto& rule : kMtpRules)
          if (auto t = take(layer_name(n, rule.hf[0])))
            add(std::move(*t), mtp + std::string(rule.mcore));
        // DeepSeek's own copies of the embedding and the head: megatron-core shares the model's.
        for (auto copy : {"embed_tokens.weight", "shared_head.head.weight"})
          if (take(layer_name(n, copy))) ++dropped_copies_;
        prefix = mtp + "transformer_layer.";
      } else {
        continue;  // reported as unmapped below
      }
      CKPT_TRY(unpack_experts(n));
      for (const auto& rule : kLayerRules) {
        if (rule.mcore.find("layer_norm_weight") != std::string_view::npos) continue;
        if (rule.mcore.find("{e}") == std::string_view::npos) {
          CKPT_TRY(apply(rule, n, prefix, std::nullopt));
          continue;
        }
        for (std::int64_t e : experts_of(n)) CKPT_TRY(apply(rule, n, prefix, e));
      }
    }
    if (family_.vision) {
      // The language model under language_model., the vision tower under vision_model.
      for (auto& t : outputs_) t.name = "language_model." + t.name;
      CKPT_TRY(vision());
    }
    return {};
  }

  std::vector<LogicalTensor>& outputs() { return outputs_; }
  const std::map<std::string, LogicalTensor>& left() const { return by_name_; }
  const std::set<std::string>& hf_names() const { return hf_names_; }
  const std::set<std::int64_t>& mtp_layers() const { return mtp_layers_; }
  bool packed_input() const { return packed_input_; }
  bool value_model() const { return value_model_; }
  std::vector<std::string>& notes() { return notes_; }
  std::int64_t dropped_copies() const { return dropped_copies_; }

 private:
  static std::string layer_name(std::int64_t layer, std::string_view hf) {
    return "model.layers." + std::to_string(layer) + "." + std::string(hf);
  }

  std::string fill(std::string_view pattern, std::optional<std::int64_t> expert) const {
    return fill_hf_name(family_, pattern, expert, false);
  }

  std::optional<LogicalTensor> take(const std::string& name) {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return std::nullopt;
    hf_names_.insert(name);
    LogicalTensor t = std::move(it->second);
    by_name_.erase(it);
    return t;
  }

  std::int64_t last_layer() const {
    std::int64_t last = -1;
    for (const auto& [name, t] : by_name_)
      if (name.starts_with("model.layers."))
        if (auto n = megatron_key_number(std::string_view(name).substr(13)))
          last = std::max(last, n->first);
    return last;
  }

  std::set<std::int64_t> experts_of(std::int64_t layer) const {
    std::set<std::int64_t> experts;
    std::string prefix = layer_name(layer, std::string(family_.moe) + ".experts.");
    for (auto it = by_name_.lower_bound(prefix);
         it != by_name_.end() && it->first.starts_with(prefix); ++it)
      if (auto e = megatron_key_number(std::string_view(it->first).substr(prefix.size())))
        experts.insert(e->first);
    return experts;
  }

  // The vision tower (visual.*) by the vision tables, run backwards.
  Status vision() {
    for (const auto& rule : kVisionRules)
      if (auto t = take("visual." + std::string(rule.hf[0])))
        add(std::move(*t), "vision_model." + std::string(rule.mcore));
    std::int64_t last = -1;
    for (const auto& [name, t] : by_name_)
      if (name.starts_with("visual.blocks."))
        if (auto n = megatron_key_number(std::string_view(name).substr(14)))
          last = std::max(last, n->first);
    for (std::int64_t b = 0; b <= last; ++b) {
      std::string hf_prefix = "visual.blocks." + std::to_string(b) + ".";
      std::string prefix = "vision_model.decoder.layers." + std::to_string(b) + ".";
      for (const auto& rule : kVisionLayerRules) {
        if (rule.mcore.find("layer_norm_weight") != std::string_view::npos) continue;
        std::vector<std::string> names;
        for (auto hf : rule.hf)
          if (!hf.empty()) names.push_back(hf_prefix + std::string(hf));
        if (!std::all_of(names.begin(), names.end(),
                         [&](const std::string& n) { return by_name_.count(n) > 0; }))
          continue;
        std::vector<LogicalTensor> parts;
        for (const auto& n : names) parts.push_back(*take(n));
        std::string mcore = prefix + std::string(rule.mcore);
        switch (rule.op) {
          case Op::kCopy:
            add(std::move(parts[0]), std::move(mcore));
            break;
          case Op::kGateUp: {
            CKPT_ASSIGN_OR_RETURN(LogicalTensor fc1, concat(parts, 0, mcore));
            outputs_.push_back(std::move(fc1));
            break;
          }
          case Op::kQkv:
            CKPT_TRY(vision_qkv(parts[0], std::move(mcore)));
            break;
        }
      }
    }
    return {};
  }

  // Hugging Face's [q; k; v] (all heads each) -> the vision attention's [q, k, v] per head.
  Status vision_qkv(const LogicalTensor& t, std::string name) {
    std::int64_t heads = config_.vision_config ? config_.vision_config->num_heads.value_or(0) : 0;
    if (heads <= 0 || t.shape.empty() || t.shape[0] % (3 * heads))
      return shape_error(t, "vision_config's num_heads " + std::to_string(heads) +
                                " does not split the fused qkv into q, k, v of whole heads");
    std::int64_t sizes[] = {3, heads, t.shape[0] / (3 * heads)};
    CKPT_ASSIGN_OR_RETURN(LogicalTensor split, unflatten(t, 0, sizes));
    CKPT_ASSIGN_OR_RETURN(split, transpose(split, 0, 1));
    CKPT_ASSIGN_OR_RETURN(split, flatten(split, 0, 2));
    split.name = std::move(name);
    outputs_.push_back(std::move(split));
    return {};
  }

  // transformers 5's packed experts (mlp.experts.gate_up_proj [E, 2F, H], down_proj [E, H, F])
  // as the per-expert tensors the hub's models hold, so that one set of rules maps both.
  Status unpack_experts(std::int64_t layer) {
    auto gate_up = take(layer_name(layer, "mlp.experts.gate_up_proj"));
    auto down = take(layer_name(layer, "mlp.experts.down_proj"));
    if (!gate_up && !down) return {};
    if (!gate_up || !down || gate_up->shape.size() != 3 || down->shape.size() != 3 ||
        gate_up->shape[0] != down->shape[0])
      return invalid_input("layer " + std::to_string(layer) +
                           ": packed experts need gate_up_proj [E, 2F, H] and down_proj [E, H, F]");
    packed_input_ = true;
    for (std::int64_t e = 0; e < gate_up->shape[0]; ++e) {
      std::string expert = std::string(family_.moe) + ".experts." + std::to_string(e) + ".";
      LogicalTensor fc1 = select(*gate_up, 0, e);
      std::int64_t half = fc1.shape[0] / 2;
      LogicalTensor g = narrow(fc1, 0, 0, half), u = narrow(fc1, 0, half, half);
      g.name = layer_name(layer, expert + std::string(family_.expert[0]) + ".weight");
      u.name = layer_name(layer, expert + std::string(family_.expert[1]) + ".weight");
      LogicalTensor d = select(*down, 0, e);
      d.name = layer_name(layer, expert + std::string(family_.expert[2]) + ".weight");
      for (auto* t : {&g, &u, &d}) by_name_.emplace(t->name, std::move(*t));
    }
    return {};
  }

  Status apply(const Rule& rule, std::int64_t layer, const std::string& prefix,
               std::optional<std::int64_t> expert) {
    std::vector<std::string> names;
    for (auto hf : rule.hf)
      if (!hf.empty()) names.push_back(layer_name(layer, fill(hf, expert)));
    for (const auto& name : names)
      if (!by_name_.count(name)) return {};
    std::vector<LogicalTensor> parts;
    for (const auto& name : names) parts.push_back(*take(name));
    std::string mcore = prefix + std::string(rule.mcore);
    if (expert) mcore = replace_all(std::move(mcore), "{e}", std::to_string(*expert));
    switch (rule.op) {
      case Op::kCopy:
        add(std::move(parts[0]), std::move(mcore));
        return {};
      case Op::kGateUp: {
        if (parts[0].shape != parts[1].shape)
          return shape_error(parts[1], "differs from " + parts[0].name + " " +
                                           shape_text(parts[0].shape) + " (gate and up halves)");
        CKPT_ASSIGN_OR_RETURN(LogicalTensor fc1, concat(parts, 0, mcore));
        outputs_.push_back(std::move(fc1));
        return {};
      }
      case Op::kQkv:
        return join_qkv(parts, std::move(mcore));
    }
    return {};
  }

  // q [nh*d, ...], k [ng*d, ...], v [ng*d, ...] -> [ng * (nh/ng + 2) * d, ...] (§3b).
  Status join_qkv(std::vector<LogicalTensor>& parts, std::string name) {
    std::int64_t heads = text_.num_attention_heads.value_or(0);
    std::int64_t groups = text_.num_key_value_heads.value_or(heads);
    std::int64_t hidden = text_.hidden_size.value_or(0);
    std::int64_t dim = text_.head_dim.value_or(heads ? hidden / heads : 0);
    if (heads <= 0 || groups <= 0 || dim <= 0 || heads % groups)
      return shape_error(parts[0], "config.json gives " + std::to_string(heads) + " heads, " +
                                       std::to_string(groups) + " key-value heads, head_dim " +
                                       std::to_string(dim) + ": not a grouped-query layout");
    const std::int64_t rows[] = {heads * dim, groups * dim, groups * dim};
    for (int i = 0; i < 3; ++i)
      if (parts[i].shape.empty() || parts[i].shape[0] != rows[i])
        return shape_error(parts[i], "config.json's " + std::to_string(heads) + " heads, " +
                                         std::to_string(groups) + " key-value heads of head_dim " +
                                         std::to_string(dim) + " need " + std::to_string(rows[i]) +
                                         " rows");
    std::vector<LogicalTensor> grouped;
    const std::int64_t per_group[] = {heads / groups * dim, dim, dim};
    for (int i = 0; i < 3; ++i) {
      std::int64_t sizes[] = {groups, per_group[i]};
      CKPT_ASSIGN_OR_RETURN(LogicalTensor g, unflatten(parts[i], 0, sizes));
      grouped.push_back(std::move(g));
    }
    CKPT_ASSIGN_OR_RETURN(LogicalTensor joined, concat(grouped, 1, name));
    CKPT_ASSIGN_OR_RETURN(joined, flatten(joined, 0, 1));
    joined.name = std::move(name);
    outputs_.push_back(std::move(joined));
    return {};
  }

  // Megatron's vocabulary padding (§3d): zero rows up to the padded size.
  Status padded(LogicalTensor t, std::string name) {
    if (t.shape.size() != 2) return shape_error(t, "not a [vocab, hidden] matrix");
    if (text_.vocab_size && t.shape[0] != *text_.vocab_size)
      return shape_error(t, "config.json's vocab_size is " + std::to_string(*text_.vocab_size));
    if (padded_vocab_ > t.shape[0]) {
      padded_rows_ = padded_vocab_ - t.shape[0];
      LogicalTensor pad = zeros(name, t.source_dtype, Shape{padded_rows_, t.shape[1]});
      pad.dtype = t.dtype;
      std::vector<LogicalTensor> parts{std::move(t), std::move(pad)};
      CKPT_ASSIGN_OR_RETURN(t, concat(parts, 0, name));
    }
    add(std::move(t), std::move(name));
    return {};
  }

  void add(LogicalTensor t, std::string name) {
    t.name = std::move(name);
    outputs_.push_back(std::move(t));
  }

  Error shape_error(const LogicalTensor& t, const std::string& what) const {
    return invalid_input("'" + t.name + "' " + shape_text(t.shape) + ": " + what + " (" +
                         config_.path.string() + ")");
  }

  const Family& family_;
  const HfConfig& config_;
  const HfTextConfig& text_;
  std::int64_t padded_vocab_;
  std::map<std::string, LogicalTensor> by_name_;  // not mapped yet
  std::set<std::string> hf_names_;                // mapped
  std::vector<LogicalTensor> outputs_;
  std::set<std::int64_t> mtp_layers_;
  std::vector<std::string> notes_;
  std::int64_t dropped_copies_ = 0;
  std::int64_t padded_rows_ = 0;
  bool packed_input_ = false;
  bool value_model_ = false;

 public:
  std::int64_t padded_rows() const { return padded_rows_; }
};

}  // namespace

Result<SourceTensors> map_hf_to_megatron(SourceTensors hf, const HfConfig& config,
                                         std::int64_t padded_vocab) {
  const Family* family = family_of(config.model_type());
  if (!family)
    return unsupported(
        config.path.string() + ": model_type '" + config.model_type() +
        "' has no Hugging Face -> Megatron table (there are: " + megatron_family_names() + ")");
  for (auto& t : hf.tensors)
    if (t.name.ends_with(".rotary_emb.inv_freq")) t.name.clear();  // recomputed, never loaded
  std::erase_if(hf.tensors, [](const LogicalTensor& t) { return t.name.empty(); });
  ReverseMapper mapper(*family, config, padded_vocab);
  CKPT_TRY(mapper.run(std::move(hf.tensors)));
  if (!mapper.left().empty()) {
    std::vector<std::string> names;
    for (const auto& [name, t] : mapper.left()) names.push_back(name);
    return invalid_input("no rule of the " + std::string(family->name) +
                         " table maps these Hugging Face tensors to megatron-core (nothing is "
                         "dropped silently): " +
                         list_names(names));
  }
  // What config.json's architecture needs; a tied model needs no lm_head
  MegatronMapOptions options;
  options.value_model = mapper.value_model();
  // (packed experts were read as the per-expert tensors they hold).
  auto missing = missing_names(*family, config, options, mapper.mtp_layers(), mapper.hf_names());
  if (!missing.empty())
    return invalid_input("the Hugging Face model lacks what " + config.path.string() + " (" +
                         config.model_type() + ") needs: " + list_names(missing));
  SourceTensors out;
  out.inputs = std::move(hf.inputs);
  out.tensors = std::move(mapper.outputs());
  out.notes.push_back("family " + std::string(family->name) + ": " +
                      std::to_string(mapper.hf_names().size()) +
                      " Hugging Face tensors mapped to " + std::to_string(out.tensors.size()) +
                      " megatron-core tensors, 0 unmapped");
  if (mapper.packed_input())
    out.notes.push_back("experts read from transformers 5's packed tensors");
  if (mapper.padded_rows())
    out.notes.push_back("vocab padded with " + std::to_string(mapper.padded_rows()) +
                        " zero rows to " + std::to_string(padded_vocab) + " (as Megatron pads)");
  if (mapper.dropped_copies())
    out.notes.push_back(
        "MTP layers' copies of the embedding and head left out (megatron-core "
        "shares the model's)");
  for (auto& n : mapper.notes()) out.notes.push_back(std::move(n));
  return out;
}

std::string megatron_family_names() {
  std::string names;
  for (const auto& f : kFamilies)
    for (auto type : f.model_types)
      if (!type.empty()) names += (names.empty() ? "" : ", ") + std::string(type);
  return names;
}

Result<SourceTensors> map_megatron_to_hf(SourceTensors source, const HfConfig& config,
                                         const MegatronMapOptions& options) {
  SourceTensors out;
  out.inputs = std::move(source.inputs);
  const Family* family = family_of(config.model_type());
  if (!family) {
    std::vector<std::string> names;
    for (const auto& t : source.tensors) names.push_back(t.name);
    return unsupported(config.path.string() + ": model_type '" + config.model_type() +
                       "' has no Megatron name table (there are: " + megatron_family_names() +
                       "); the checkpoint's tensors stay unmapped: " + list_names(names));
  }
  Mapper mapper(*family, config, options);
  std::vector<std::string> unmapped;
  std::size_t mapped = 0;
  for (auto& t : source.tensors) {
    std::string name = t.name;
    CKPT_ASSIGN_OR_RETURN(bool known, mapper.map(std::move(t)));
    if (known)
      ++mapped;
    else
      unmapped.push_back(name);
  }
  if (!unmapped.empty())
    return invalid_input("no rule of the " + std::string(family->name) +
                         " table maps these megatron-core tensors (nothing is dropped silently): " +
                         list_names(unmapped));
  CKPT_TRY(mapper.add_packed_experts());
  mapper.add_mtp_copies();
  bool vision_from_dir = false;
  if (family->vision && !mapper.has_vision() && options.vision_weights) {
    mapper.add_vision_weights(*options.vision_weights, out.inputs.size());
    out.inputs.insert(out.inputs.end(), options.vision_weights->inputs.begin(),
                      options.vision_weights->inputs.end());
    vision_from_dir = true;
  }
  bool zero_bias = options.value_model && mapper.add_zero_value_bias();
  auto& tensors = mapper.outputs();
  std::set<std::string> have;
  for (const auto& t : tensors)
    if (!have.insert(t.name).second)
      return invalid_input("two megatron-core tensors become '" + t.name +
                           "' (a TE fused norm and a separate one for the same layer?)");
  auto missing = missing_names(*family, config, options, mapper.mtp_layers(), have);
  if (!missing.empty())
    return invalid_input("the checkpoint lacks what " + config.path.string() + " (" +
                         config.model_type() + ") needs: " + list_names(missing) +
                         (family->vision && !mapper.has_vision() && !options.vision_weights
                              ? " (it holds no vision tower: --vit_dir DIR takes it from a "
                                "Hugging Face model)"
                              : ""));
  std::sort(tensors.begin(), tensors.end(), [](const LogicalTensor& a, const LogicalTensor& b) {
    return dot_natural_less(a.name, b.name);
  });
  out.notes.push_back("family " + std::string(family->name) + ": " + std::to_string(mapped) +
                      " megatron-core tensors mapped to " + std::to_string(tensors.size()) +
                      " Hugging Face tensors, 0 unmapped; every tensor config.json's "
                      "architecture needs is there");
  const HfTextConfig& text = config.language();
  auto mtp_count = static_cast<std::int64_t>(mapper.mtp_layers().size());
  if (mtp_count)
    out.notes.push_back("multi-token prediction: " + std::to_string(mtp_count) +
                        " layer(s) written as model.layers." +
                        std::to_string(text.num_hidden_layers.value_or(0)) + "+");
  if (text.num_nextn_predict_layers.value_or(0) > mtp_count)
    out.notes.push_back("config.json's num_nextn_predict_layers is " +
                        std::to_string(*text.num_nextn_predict_layers) + ", the checkpoint has " +
                        std::to_string(mtp_count) +
                        " MTP layer(s) (trained without them; transformers does not load them)");
  if (mapper.packed())
    out.notes.push_back(
        "experts packed per layer as transformers 5 holds them in memory "
        "(mlp.experts.gate_up_proj, down_proj): --keep-packed-experts");
  if (vision_from_dir)
    out.notes.push_back("vision tower: not in the checkpoint, taken from --vit_dir");
  if (options.value_model && !config.architectures.empty() &&
      config.architectures.front().find("ForTokenClassification") == std::string::npos)
    out.notes.push_back("value model: config.json names " + config.architectures.front() +
                        "; the weights are a token-classification model's (score, num_labels 1): "
                        "set \"architectures\" accordingly to load them");
  if (zero_bias)
    out.notes.push_back(
        "value head: score.bias written as zeros (the checkpoint's head has no "
        "bias; transformers' token-classification head has one)");
  if (mapper.trimmed_rows())
    out.notes.push_back("vocab padding trimmed: " + std::to_string(mapper.trimmed_rows()) +
                        " rows past config.json's vocab_size");
  out.tensors = std::move(tensors);
  return out;
}

}  // namespace ckptstream
