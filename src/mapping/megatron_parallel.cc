#include "mapping/megatron_parallel.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "formats/megatron_args.h"
#include "formats/megatron_checkpoint.h"
#include "plan/views.h"

namespace ckptstream {
namespace {

// A canonical tensor's place in the model.
struct Param {
  enum class Where { kTop, kLayer, kMtp } where = Where::kTop;
  std::int64_t layer = 0;  // decoder layer, or MTP layer k
  std::string prefix;      // "", "decoder.layers.", "mtp.layers.{k}."
  std::string rest;        // below the layer ("mlp.experts.linear_fc1.weight" for experts)
  std::optional<std::int64_t> expert;
};

Result<Param> parse(const std::string& name) {
  Param p;
  std::string_view view = name;
  auto expert_of = [&](std::string rest) -> std::string {
    constexpr std::string_view kExperts = "mlp.experts.";
    if (rest.starts_with(kExperts))
      if (auto e = megatron_key_number(std::string_view(rest).substr(kExperts.size()))) {
        p.expert = e->first;
        return std::string(kExperts) + std::string(e->second);
      }
    return rest;
  };
  if (view.starts_with("decoder.layers.")) {
    auto n = megatron_key_number(view.substr(15));
    if (!n) return invalid_input("'" + name + "': no layer number");
    p.where = Param::Where::kLayer;
    p.layer = n->first;
    p.rest = expert_of(std::string(n->second));
    return p;
  }
  if (view.starts_with("mtp.layers.")) {
    auto k = megatron_key_number(view.substr(11));
    if (!k) return invalid_input("'" + name + "': no MTP layer number");
    p.where = Param::Where::kMtp;
    p.layer = k->first;
    std::string rest(k->second);
    constexpr std::string_view kInner = "transformer_layer.";
    if (rest.starts_with(kInner)) {
      p.prefix = "mtp.layers." + std::to_string(k->first) + "." + std::string(kInner);
      p.rest = expert_of(rest.substr(kInner.size()));
    } else {
      p.prefix = "mtp.layers." + std::to_string(k->first) + ".";
      p.rest = rest;
    }
    return p;
  }
  p.rest = name;
  return p;
}

std::string module_of(const std::string& rest) {
  auto dot = rest.rfind('.');
  return dot == std::string::npos ? rest : rest.substr(0, dot);
}

bool ends_with_module(const std::string& module, std::string_view name) {
  return module == name || module.ends_with("." + std::string(name));
}

// How a parameter is split across tensor-parallel ranks: the reader's rule (§3a), as a dim.
struct Split {
  int dim = -1;         // -1: replicated
  bool gated = false;   // [gate; up] halves split each (linear_fc1 of a SwiGLU MLP)
  bool expert = false;  // over the expert tensor-parallel group
};

Split split_of(const Param& p, const Shape& shape, MegatronSpec spec) {
  Split split;
  split.expert = p.expert.has_value();
  // Every family of the tables has a SwiGLU MLP.
  switch (
      megatron_tp_split(p.rest, shape.empty() ? 0 : shape[0], true, spec == MegatronSpec::kLocal)) {
    case MegatronTpSplit::kReplicated:
      break;
    case MegatronTpSplit::kRows:
      split.dim = 0;
      break;
    case MegatronTpSplit::kGatedRows:
      split.dim = 0;
      split.gated = true;
      break;
    case MegatronTpSplit::kColumns:
      split.dim = 1;
      break;
  }
  return split;
}

constexpr std::string_view kLinearModules[] = {"linear_qkv",        "linear_proj",
                                               "linear_fc1",        "linear_fc2",
                                               "linear_q_proj",     "linear_q_down_proj",
                                               "linear_q_up_proj",  "linear_kv_down_proj",
                                               "linear_kv_up_proj", "eh_proj"};

bool is_linear(const std::string& module) {
  for (auto name : kLinearModules)
    if (ends_with_module(module, name)) return true;
  return false;
}

// Everything known about the layers before pieces are cut.
struct LayerFacts {
  bool moe = false;     // has a router
  bool mla = false;     // multi-latent attention
  bool vision = false;  // a vision tower's layer (its specs have no keys map)
};

// The key of a parameter below its layer, as the spec and format name it (see the header).
std::string spec_name(const std::string& rest, const LayerFacts& layer, MegatronSpec spec,
                      MegatronFormat format) {
  const bool te = spec == MegatronSpec::kTransformerEngine;
  const bool dist = format == MegatronFormat::kTorchDist;
  const bool keys_map = dist && !layer.mla && !layer.vision;  // the local spec's
  if (!layer.mla && rest == "input_layernorm.weight" && (te || keys_map))
    return "self_attention.linear_qkv.layer_norm_weight";
  if (rest == "pre_mlp_layernorm.weight" && ((te && !layer.moe) || (!te && keys_map)))
    return "mlp.linear_fc1.layer_norm_weight";
  if (te && layer.mla && rest == "self_attention.q_layernorm.weight")
    return "self_attention.linear_q_up_proj.layer_norm_weight";
  if (te && layer.mla && rest == "self_attention.kv_layernorm.weight")
    return "self_attention.linear_kv_up_proj.layer_norm_weight";
  return rest;
}

// The modules of a layer whose _extra_state the spec saves: the local spec's linear layers;
// Transformer Engine's too, and its attention kernel.
std::vector<std::string> extra_state_modules(const std::set<std::string>& modules,
                                             MegatronSpec spec) {
  std::vector<std::string> out;
  for (const auto& m : modules)
    if (is_linear(m)) out.push_back(m);
  // Transformer Engine: its attention kernel, and (TE 2) the norms that are modules of their own
  // (TENorm: a MoE layer's pre-MLP norm, MLA's input norm, q/k norms, MTP's norms); a loader
  // ignores an object its model lacks, but not a missing one.
  if (spec == MegatronSpec::kTransformerEngine)
    for (const auto& m : modules) {
      if (m.ends_with("self_attention.linear_proj"))
        out.push_back(m.substr(0, m.size() - 11) + "core_attention");
      if (m.ends_with("layernorm") || m == "enorm" || m == "hnorm") out.push_back(m);
    }
  return out;
}

std::string join(const Shape& values) {
  std::string out;
  for (std::size_t i = 0; i < values.size(); ++i) out += (i ? "." : "") + std::to_string(values[i]);
  return out;
}

class Layouter {
 public:
  // `vision`: a vision tower, all on the first pipeline stage.
  Layouter(const MegatronModelFacts& facts, const MegatronParallel& parallel, MegatronSpec spec,
           MegatronFormat format, bool vision = false)
      : facts_(facts), par_(parallel), spec_(spec), format_(format), vision_(vision) {
    plane_ = std::max(par_.tp, par_.ep * par_.etp);
  }

  Result<MegatronRankLayout> run(const std::vector<LogicalTensor>& tensors) {
    CKPT_TRY(stage_table());
    std::vector<std::pair<Param, const LogicalTensor*>> params;
    for (const auto& t : tensors) {
      CKPT_ASSIGN_OR_RETURN(Param p, parse(t.name));
      params.emplace_back(std::move(p), &t);
    }
    // Layer facts and homogeneity (torch_dist stacks layers only when all have one structure).
    std::map<std::int64_t, std::set<std::string>> decoder_rests;
    for (const auto& [p, t] : params) {
      if (p.where == Param::Where::kTop) continue;
      auto& facts = p.where == Param::Where::kLayer ? layer_facts_[p.layer] : mtp_facts_[p.layer];
      if (p.rest.starts_with("mlp.router.")) facts.moe = true;
      if (p.rest.starts_with("self_attention.linear_kv_")) facts.mla = true;
      facts.vision = vision_;
      if (p.where == Param::Where::kLayer) decoder_rests[p.layer].insert(p.rest);
    }
    stacked_ = format_ == MegatronFormat::kTorchDist && !decoder_rests.empty();
    for (const auto& [n, rests] : decoder_rests)
      if (rests != decoder_rests.begin()->second) stacked_ = false;
    if (static_cast<std::int64_t>(decoder_rests.size()) != facts_.num_layers)
      return invalid_input("the model has " + std::to_string(decoder_rests.size()) +
                           " decoder layers with weights, config.json says " +
                           std::to_string(facts_.num_layers));
    for (const auto& [p, t] : params) CKPT_TRY(place(p, *t));
    add_extra_states();
    MegatronRankLayout layout;
    for (auto& [rank, file] : files_) layout.files.push_back(std::move(file));
    layout.world_size = par_.pp * plane_;
    layout.description =
        "TP " + std::to_string(par_.tp) + " x PP " + std::to_string(par_.pp) +
        (par_.vpp > 1 ? " (VPP " + std::to_string(par_.vpp) + ")" : "") + " x EP " +
        std::to_string(par_.ep) + (par_.ep > 1 ? " (ETP " + std::to_string(par_.etp) + ")" : "") +
        ", " +
        (format_ == MegatronFormat::kTorchDist
             ? std::string("torch_dist, ") + (stacked_ ? "stacked layers" : "per-layer keys")
             : std::string("legacy torch, ") + std::to_string(files_.size()) + " rank files") +
        ", " + (spec_ == MegatronSpec::kLocal ? "local" : "transformer_engine") + " layer spec";
    return layout;
  }

 private:
  // Global layer -> (pipeline stage, virtual chunk, local number), by megatron-core's offsets.
  Status stage_table() {
    if (vision_) {
      for (std::int64_t n = 0; n < facts_.num_layers; ++n) stage_of_[n] = {0, 0, n};
      return {};
    }
    MegatronArgs args;
    args.tp = par_.tp;
    args.pp = par_.pp;
    args.vpp = par_.vpp > 1 ? par_.vpp : 0;
    args.num_layers = facts_.num_layers;
    if (par_.first_stage_layers) args.first_stage_layers = par_.first_stage_layers;
    if (par_.last_stage_layers) args.last_stage_layers = par_.last_stage_layers;
    std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>> starts;  // offset, pp, vp
    for (std::int64_t vp = 0; vp < par_.vpp; ++vp)
      for (std::int64_t pp = 0; pp < par_.pp; ++pp) {
        CKPT_ASSIGN_OR_RETURN(std::int64_t offset, megatron_layer_offset(args, pp, vp));
        starts.emplace_back(offset, pp, vp);
      }
    std::sort(starts.begin(), starts.end());
    for (std::int64_t n = 0; n < facts_.num_layers; ++n) {
      auto it =
          std::upper_bound(starts.begin(), starts.end(), std::make_tuple(n, par_.pp, par_.vpp));
      auto [offset, pp, vp] = *std::prev(it);
      stage_of_[n] = {pp, vp, n - offset};
    }
    return {};
  }

  struct Stage {
    std::int64_t pp = 0, vp = 0, local = 0;
  };

  Stage stage(const Param& p) const {
    if (p.where == Param::Where::kLayer) return stage_of_.at(p.layer);
    Stage last{par_.pp - 1, par_.vpp - 1, 0};
    if (p.where == Param::Where::kMtp) return last;
    if (vision_ || p.rest.starts_with("embedding.")) return Stage{};
    return last;  // final norm, output layer
  }

  MegatronRankFile& file(std::int64_t pp, std::int64_t r, std::int64_t ep) {
    std::int64_t rank = pp * plane_ + r;
    if (format_ == MegatronFormat::kLegacy) rank = (pp * par_.ep + ep) * par_.tp + r;
    auto [it, fresh] = files_.try_emplace(rank);
    if (fresh) {
      it->second.rank = rank;
      it->second.models.resize(format_ == MegatronFormat::kLegacy ? par_.vpp : 1);
      it->second.extra_states.resize(it->second.models.size());
      char dir[64];
      if (par_.pp > 1 && par_.ep > 1)
        std::snprintf(dir, sizeof dir, "mp_rank_%02lld_%03lld_%03lld", static_cast<long long>(r),
                      static_cast<long long>(pp), static_cast<long long>(ep));
      else if (par_.pp > 1)
        std::snprintf(dir, sizeof dir, "mp_rank_%02lld_%03lld", static_cast<long long>(r),
                      static_cast<long long>(pp));
      else if (par_.ep > 1)
        std::snprintf(dir, sizeof dir, "mp_rank_%02lld_%03lld", static_cast<long long>(r),
                      static_cast<long long>(ep));
      else
        std::snprintf(dir, sizeof dir, "mp_rank_%02lld", static_cast<long long>(r));
      it->second.dir = dir;
    }
    return it->second;
  }

  const LayerFacts& facts_of(const Param& p) const {
    static const LayerFacts kNone;
    if (p.where == Param::Where::kLayer) return layer_facts_.at(p.layer);
    if (p.where == Param::Where::kMtp && p.prefix.ends_with("transformer_layer."))
      return mtp_facts_.at(p.layer);
    return kNone;
  }

  // The TP-rank pieces of `t` split as `split` over `ranks`: (rank, offsets in t, the piece).
  Result<std::vector<std::pair<std::int64_t, std::vector<std::pair<Shape, LogicalTensor>>>>>
  tp_pieces(const LogicalTensor& t, const Split& split, std::int64_t ranks) const {
    std::vector<std::pair<std::int64_t, std::vector<std::pair<Shape, LogicalTensor>>>> out;
    Shape zero(t.shape.size(), 0);
    if (split.dim < 0) {
      out.push_back({0, {{zero, t}}});
      return out;
    }
    auto dim = static_cast<std::size_t>(split.dim);
    if (dim >= t.shape.size())
      return invalid_input("'" + t.name + "' has no dim " + std::to_string(dim));
    std::int64_t size = t.shape[dim];
    std::int64_t halves = split.gated ? 2 : 1;
    if (size % (halves * ranks))
      return invalid_input(
          "'" + t.name + "' " + shape_text(t.shape) + ": dim " + std::to_string(dim) +
          " does not split into " + std::to_string(halves * ranks) + " equal parts (TP " +
          std::to_string(ranks) + (split.gated ? ", gate and up halves" : "") + ")");
    std::int64_t part = size / halves / ranks;
    for (std::int64_t r = 0; r < ranks; ++r) {
      std::vector<std::pair<Shape, LogicalTensor>> boxes;
      for (std::int64_t h = 0; h < halves; ++h) {
        Shape offsets = zero;
        offsets[dim] = h * (size / halves) + r * part;
        boxes.push_back({offsets, narrow(t, dim, offsets[dim], part)});
      }
      out.push_back({r, std::move(boxes)});
    }
    return out;
  }

  Status place(const Param& p, const LogicalTensor& t) {
    const LayerFacts& layer = facts_of(p);
    Split split = split_of(p, t.shape, spec_);
    if (p.rest == "output_layer.weight" && !t.shape.empty() && t.shape[0] == 1) value_head_ = true;
    std::int64_t ranks = split.expert ? par_.etp : par_.tp;
    Stage st = stage(p);
    std::string rest = spec_name(p.rest, layer, spec_, format_);
    CKPT_ASSIGN_OR_RETURN(auto pieces, tp_pieces(t, split, ranks));
    const std::int64_t experts = facts_.num_experts;
    const std::int64_t local_experts = par_.ep > 0 && experts ? experts / par_.ep : 0;
    std::int64_t ep_rank = p.expert && local_experts ? *p.expert / local_experts : 0;
    // Modules with a weight of their own (a fused norm's layer_norm_weight names its linear's).
    if (p.where == Param::Where::kTop && p.rest.ends_with(".weight") &&
        module_of(p.rest).starts_with("projection."))
      add_everywhere(st, module_of(p.rest) + "._extra_state");
    if (p.where != Param::Where::kTop && rest.ends_with(".weight") &&
        !rest.ends_with(".layer_norm_weight")) {
      std::tuple<bool, std::int64_t, std::string> where{p.where == Param::Where::kMtp, p.layer,
                                                        p.prefix};
      modules_[where].insert(module_of(rest));
      if (p.expert) expert_modules_[where].insert(module_of(rest));
    }
    // Transformer Engine's final norm (TENorm) has one too.
    if (p.where == Param::Where::kTop && spec_ == MegatronSpec::kTransformerEngine &&
        p.rest == "decoder.final_layernorm.weight")
      add_everywhere(st, "decoder.final_layernorm._extra_state");

    if (format_ == MegatronFormat::kTorchDist) {
      // The key and the prepended axes (layer, expert) of the global tensor.
      std::string key;
      Shape lead_shape, lead_offsets;
      if (p.where == Param::Where::kTop) {
        key = p.rest;
      } else if (p.where == Param::Where::kLayer && stacked_) {
        key = "decoder.layers." + rest;
        lead_shape.push_back(facts_.num_layers);
        lead_offsets.push_back(p.layer);
      } else {
        key = (p.where == Param::Where::kLayer ? "decoder.layers." + std::to_string(p.layer) + "."
                                               : p.prefix) +
              rest;
      }
      if (p.expert) {
        key = replace_experts(key);
        lead_shape.push_back(experts);
        lead_offsets.push_back(*p.expert);
      }
      Shape global = lead_shape;
      global.insert(global.end(), t.shape.begin(), t.shape.end());
      for (auto& [r, boxes] : pieces) {
        std::int64_t plane_rank = split.expert ? ep_rank * par_.etp + r : r;
        auto& out = file(st.pp, plane_rank, 0).models[0];
        for (auto& [offsets, box] : boxes) {
          Shape chunk_offsets = lead_offsets;
          chunk_offsets.insert(chunk_offsets.end(), offsets.begin(), offsets.end());
          LogicalTensor data = box;
          if (!lead_shape.empty()) {
            Shape sizes(lead_shape.size(), 1);
            sizes.push_back(data.shape.empty() ? 1 : data.shape[0]);
            if (data.shape.empty()) return invalid_input("'" + t.name + "': a 0-d layer parameter");
            CKPT_ASSIGN_OR_RETURN(data, unflatten(data, 0, sizes));
          }
          // Names in plans and manifests are unique per file: the chunk's box says which.
          data.name = key + "@" + join(chunk_offsets);
          out.push_back(MegatronPiece{key, global, chunk_offsets, std::move(data)});
        }
      }
      return {};
    }

    // Legacy: one state dict per (tp, pp, ep); dense pieces are in every EP rank's file.
    std::string key;
    if (p.where == Param::Where::kTop) {
      key = p.rest;
    } else {
      // An MTP layer's transformer layer is the module mtp_model_layer in a state dict
      // (torch_dist renames it transformer_layer).
      std::string prefix = p.where == Param::Where::kLayer
                               ? "decoder.layers." + std::to_string(st.local) + "."
                               : legacy_mtp_prefix(p.prefix);
      key = prefix + rest;
      if (p.expert) {
        std::int64_t local = *p.expert - ep_rank * local_experts;
        key = spec_ == MegatronSpec::kLocal ? prefix + "mlp.experts.local_experts." +
                                                  std::to_string(local) + "." + rest.substr(12)
                                            : prefix + rest + std::to_string(local);
      }
    }
    for (auto& [r, boxes] : pieces) {
      std::vector<LogicalTensor> parts;
      for (auto& [offsets, box] : boxes) parts.push_back(std::move(box));
      CKPT_ASSIGN_OR_RETURN(LogicalTensor local, concat(parts, 0, key));
      local.name = key;
      std::vector<std::int64_t> tps;
      if (split.dim < 0 || (split.expert && par_.etp == 1 && par_.tp > 1))
        for (std::int64_t tp = 0; tp < par_.tp; ++tp) tps.push_back(tp);
      else
        tps.push_back(r);
      std::vector<std::int64_t> eps;
      if (p.expert)
        eps.push_back(ep_rank);
      else
        for (std::int64_t e = 0; e < par_.ep; ++e) eps.push_back(e);
      for (std::int64_t tp : tps)
        for (std::int64_t e : eps) {
          auto& model = file(st.pp, tp, e).models[static_cast<std::size_t>(st.vp)];
          model.push_back(MegatronPiece{key, {}, {}, local});
          // A tied embedding has a copy on the last stage (and so does MTP's embedding there).
          if (p.rest == "embedding.word_embeddings.weight" && par_.pp > 1 &&
              (facts_.tied_embeddings || !mtp_facts_.empty())) {
            auto& last = file(par_.pp - 1, tp, e).models[static_cast<std::size_t>(par_.vpp - 1)];
            last.push_back(
                MegatronPiece{facts_.tied_embeddings ? "output_layer.weight" : key, {}, {}, local});
          }
        }
    }
    return {};
  }

  // A module's _extra_state outside the layers: torch_dist one object (rank tp 0 of its stage),
  // legacy an entry in every file of its stage.
  void add_everywhere(const Stage& st, const std::string& name) {
    if (format_ == MegatronFormat::kTorchDist) {
      file(st.pp, 0, 0).extra_states[0].push_back(name + "/shard_0_1");
      return;
    }
    for (std::int64_t tp = 0; tp < par_.tp; ++tp)
      for (std::int64_t e = 0; e < par_.ep; ++e)
        file(st.pp, tp, e).extra_states[static_cast<std::size_t>(st.vp)].push_back(name);
  }

  static std::string legacy_mtp_prefix(std::string prefix) {
    constexpr std::string_view kSharded = "transformer_layer.";
    if (prefix.ends_with(kSharded))
      prefix.replace(prefix.size() - kSharded.size(), kSharded.size(), "mtp_model_layer.");
    return prefix;
  }

  static std::string replace_experts(std::string key) {
    auto at = key.find("mlp.experts.");
    if (at != std::string::npos) key.replace(at, 12, "mlp.experts.experts.");
    return key;
  }

  // One None object per _extra_state of the spec, written by the rank that holds the module's
  // first piece.
  void add_extra_states() {
    for (const auto& [where, modules] : modules_) {
      auto [mtp, layer, prefix] = where;
      Param p;
      p.where = mtp ? Param::Where::kMtp : Param::Where::kLayer;
      p.layer = layer;
      p.prefix = prefix;
      Stage st = stage(p);
      std::set<std::string> experts;
      if (auto it = expert_modules_.find(where); it != expert_modules_.end()) experts = it->second;
      std::set<std::string> dense;
      for (const auto& m : modules)
        if (!experts.count(m)) dense.insert(m);
      std::string base =
          mtp ? (format_ == MegatronFormat::kLegacy ? legacy_mtp_prefix(prefix) : prefix)
              : (format_ == MegatronFormat::kTorchDist && stacked_
                     ? "decoder.layers."
                     : "decoder.layers." +
                           std::to_string(format_ == MegatronFormat::kTorchDist ? layer
                                                                                : st.local) +
                           ".");
      for (const auto& m : extra_state_modules(dense, spec_)) {
        if (format_ == MegatronFormat::kTorchDist) {
          std::string shard = stacked_ && !mtp ? "/shard_" + std::to_string(layer) + "_" +
                                                     std::to_string(facts_.num_layers)
                                               : "/shard_0_1";
          file(st.pp, 0, 0).extra_states[0].push_back(base + m + "._extra_state" + shard);
        } else {
          for (std::int64_t tp = 0; tp < par_.tp; ++tp)
            for (std::int64_t e = 0; e < par_.ep; ++e)
              file(st.pp, tp, e)
                  .extra_states[static_cast<std::size_t>(st.vp)]
                  .push_back(base + m + "._extra_state");
        }
      }
      const std::int64_t experts_n = facts_.num_experts;
      const std::int64_t local_n = experts_n / std::max<std::int64_t>(par_.ep, 1);
      for (const auto& m : experts) {
        for (std::int64_t e = 0; e < experts_n; ++e) {
          std::int64_t ep_rank = local_n ? e / local_n : 0;
          if (format_ == MegatronFormat::kTorchDist) {
            Shape offsets, shape;
            if (stacked_ && !mtp) {
              offsets.push_back(layer);
              shape.push_back(facts_.num_layers);
            }
            offsets.push_back(e);
            shape.push_back(experts_n);
            std::string key = replace_experts(base + m) + "._extra_state/shard_" + join(offsets) +
                              "_" + join(shape);
            file(st.pp, ep_rank * par_.etp, 0).extra_states[0].push_back(key);
          } else {
            std::int64_t local = e - ep_rank * local_n;
            std::string name = spec_ == MegatronSpec::kLocal
                                   ? base + "mlp.experts.local_experts." + std::to_string(local) +
                                         "." + m.substr(12) + "._extra_state"
                                   : base + m + "._extra_state";
            if (spec_ != MegatronSpec::kLocal && local != 0) continue;  // one per grouped module
            for (std::int64_t tp = 0; tp < par_.tp; ++tp)
              file(st.pp, tp, ep_rank)
                  .extra_states[static_cast<std::size_t>(st.vp)]
                  .push_back(name);
          }
        }
      }
    }
    // The legacy output layer module (ColumnParallelLinear) saves one even when tied; a value
    // head (a plain Linear) has none.
    if (format_ == MegatronFormat::kLegacy && !value_head_ && !vision_)
      for (std::int64_t tp = 0; tp < par_.tp; ++tp)
        for (std::int64_t e = 0; e < par_.ep; ++e)
          file(par_.pp - 1, tp, e)
              .extra_states[static_cast<std::size_t>(par_.vpp - 1)]
              .push_back("output_layer._extra_state");
  }

  const MegatronModelFacts& facts_;
  const MegatronParallel& par_;
  MegatronSpec spec_;
  MegatronFormat format_;
  std::int64_t plane_ = 1;
  bool stacked_ = false;
  bool vision_ = false;
  bool value_head_ = false;  // a one-row output layer (a critic's)
  std::map<std::int64_t, Stage> stage_of_;
  std::map<std::int64_t, LayerFacts> layer_facts_;
  std::map<std::int64_t, LayerFacts> mtp_facts_;
  std::map<std::tuple<bool, std::int64_t, std::string>, std::set<std::string>> modules_;
  std::map<std::tuple<bool, std::int64_t, std::string>, std::set<std::string>> expert_modules_;
  std::map<std::int64_t, MegatronRankFile> files_;
};

}  // namespace

Status check_megatron_parallel(const MegatronParallel& par, std::int64_t heads, std::int64_t groups,
                               std::int64_t ffn, std::int64_t moe_ffn,
                               const MegatronModelFacts& facts) {
  auto bad = [](const std::string& what) { return usage_error(what); };
  for (auto [name, value] : {std::pair{"--tp", par.tp},
                             {"--pp", par.pp},
                             {"--vpp", par.vpp},
                             {"--ep", par.ep},
                             {"--etp", par.etp}})
    if (value < 1) return bad(std::string(name) + " must be at least 1");
  if (heads % par.tp)
    return bad("--tp " + std::to_string(par.tp) + " does not divide the " + std::to_string(heads) +
               " attention heads");
  if (groups % par.tp)
    return bad("--tp " + std::to_string(par.tp) + " does not divide the " + std::to_string(groups) +
               " query groups (num_key_value_heads)");
  if (ffn && ffn % par.tp)
    return bad("--tp " + std::to_string(par.tp) + " does not divide the ffn size " +
               std::to_string(ffn) + " (intermediate_size)");
  if (facts.num_experts) {
    if (facts.num_experts % par.ep)
      return bad("--ep " + std::to_string(par.ep) + " does not divide the " +
                 std::to_string(facts.num_experts) + " experts");
    if (moe_ffn && moe_ffn % par.etp)
      return bad("--etp " + std::to_string(par.etp) + " does not divide the expert ffn size " +
                 std::to_string(moe_ffn));
  } else if (par.ep > 1) {
    return bad("--ep " + std::to_string(par.ep) + " for a model without experts");
  }
  if (!par.first_stage_layers && !par.last_stage_layers && facts.num_layers % (par.pp * par.vpp))
    return bad(std::to_string(facts.num_layers) + " layers do not split evenly into --pp " +
               std::to_string(par.pp) + " x --vpp " + std::to_string(par.vpp) +
               " chunks (--first-stage-layers / --last-stage-layers make uneven stages)");
  return {};
}

Result<MegatronRankLayout> layout_megatron(const std::vector<LogicalTensor>& tensors,
                                           const MegatronModelFacts& facts,
                                           const MegatronParallel& parallel, MegatronSpec spec,
                                           MegatronFormat format) {
  if (format == MegatronFormat::kLegacy && parallel.ep > 1 && parallel.etp != parallel.tp &&
      parallel.etp != 1)
    return unsupported("legacy torch format: --etp must be 1 or --tp");
  // A vision-language model: its language model and vision tower laid out apart (the tower on
  // the first stage), their keys under language_model. / vision_model., one file per rank.
  std::vector<LogicalTensor> language, vision;
  for (const auto& t : tensors) {
    if (t.name.starts_with("vision_model.")) {
      vision.push_back(t);
      vision.back().name.erase(0, 13);
    } else if (t.name.starts_with("language_model.")) {
      language.push_back(t);
      language.back().name.erase(0, 15);
    }
  }
  if (vision.empty() && language.empty()) {
    Layouter layouter(facts, parallel, spec, format);
    return layouter.run(tensors);
  }
  Layouter text_layouter(facts, parallel, spec, format);
  CKPT_ASSIGN_OR_RETURN(MegatronRankLayout out, text_layouter.run(language));
  MegatronModelFacts tower;
  std::set<std::int64_t> blocks;
  for (const auto& t : vision)
    if (t.name.starts_with("decoder.layers."))
      if (auto n = megatron_key_number(std::string_view(t.name).substr(15)))
        blocks.insert(n->first);
  tower.num_layers = static_cast<std::int64_t>(blocks.size());
  Layouter vision_layouter(tower, parallel, spec, format, true);
  CKPT_ASSIGN_OR_RETURN(MegatronRankLayout towers, vision_layouter.run(vision));
  auto prefix = [](MegatronRankLayout& layout, const std::string& model) {
    for (auto& f : layout.files) {
      for (auto& chunk : f.models)
        for (auto& piece : chunk) {
          piece.key = model + piece.key;
          piece.data.name = model + piece.data.name;
        }
      for (auto& chunk : f.extra_states)
        for (auto& name : chunk) name = model + name;
    }
  };
  prefix(out, "language_model.");
  prefix(towers, "vision_model.");
  for (auto& f : towers.files) {
    auto it = std::find_if(out.files.begin(), out.files.end(),
                           [&](const MegatronRankFile& g) { return g.rank == f.rank; });
    if (it == out.files.end()) {
      out.files.push_back(std::move(f));
      continue;
    }
    for (std::size_t v = 0; v < f.models.size() && v < it->models.size(); ++v) {
      auto& models = it->models[v];
      models.insert(models.begin(), f.models[v].begin(), f.models[v].end());
      auto& extra = it->extra_states[v];
      extra.insert(extra.begin(), f.extra_states[v].begin(), f.extra_states[v].end());
    }
  }
  std::sort(out.files.begin(), out.files.end(),
            [](const MegatronRankFile& a, const MegatronRankFile& b) { return a.rank < b.rank; });
  out.description += "; a vision tower of " + std::to_string(tower.num_layers) + " layers";
  return out;
}

}  // namespace ckptstream
