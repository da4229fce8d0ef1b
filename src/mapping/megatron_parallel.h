// Megatron's parallel layout as data: which piece of each canonical global tensor (the names
// map_hf_to_megatron gives, mapping/megatron_hf.h) each rank of a TP x PP x EP run holds, and
// under which key, for the two checkpoint formats (docs/formats/megatron.md §1.4, §2, §3):
//
//   torch_dist  keys as TransformerBlock.sharded_state_dict names them: stacked layers
//               (decoder.layers.<param>, a leading layer axis) when every layer has the same
//               parameters, else per layer (decoder.layers.{n}.<param>, DeepSeek's dense-then-MoE
//               layers); experts under mlp.experts.experts.* with an expert axis after the layer
//               axis; one chunk per TP (experts: ETP) rank, a gated linear_fc1 in 2 x TP chunks
//               (gate rank r at r, up rank r at TP + r), replicated tensors once; every
//               _extra_state object of the layer spec as a byte item.
//   torch       (legacy) one state dict per (tp, pp, ep) rank with local layer numbers (VPP
//               chunks as model0..), each rank's rows of a column-parallel weight (a gated
//               linear_fc1 as [gate_r; up_r]) and columns of a row-parallel one, experts
//               numbered locally (local spec: local_experts.{i}; TE spec: TEGroupedMLP's
//               linear_fc1.weight{i}).
//
// Layer specs differ in names only: the local spec's torch_dist keys fuse the dense layers'
// input and pre-MLP norms into linear_qkv / linear_fc1 (its sharded_state_dict_keys_map), the
// Transformer Engine spec fuses them in the modules themselves (and for MLA the q/kv norms into
// linear_q/kv_up_proj) but keeps a MoE layer's pre_mlp_layernorm apart.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "formats/megatron_layout.h"
#include "plan/plan.h"

namespace ckptstream {

struct MegatronParallel {
  std::int64_t tp = 1;
  std::int64_t pp = 1;
  std::int64_t vpp = 1;  // virtual pipeline chunks per stage
  std::int64_t ep = 1;
  std::int64_t etp = 1;  // expert tensor parallel
  // Layers of the first / last pipeline stage when uneven (0: even split).
  std::int64_t first_stage_layers = 0;
  std::int64_t last_stage_layers = 0;
};

enum class MegatronSpec { kTransformerEngine, kLocal };

// The model facts the layout needs (from config.json).
struct MegatronModelFacts {
  std::int64_t num_layers = 0;
  std::int64_t num_experts = 0;
  bool tied_embeddings = false;
};

// One piece a rank writes: a DCP chunk (torch_dist: `key`, its global shape and the box's
// offsets) or a state-dict entry (torch: `key` with local layer numbers, in `chunk`'s model).
struct MegatronPiece {
  std::string key;
  Shape global_shape;
  Shape offsets;
  LogicalTensor data;
};

// An _extra_state entry: torch_dist a ShardedObject key ("…._extra_state/shard_0_2"), torch a
// state-dict name; saved as None (what the local spec's modules hold; Transformer Engine's
// set_extra_state takes None as "no FP8 state").
struct MegatronRankFile {
  std::int64_t rank = 0;  // torch_dist: the global rank (file __{rank}_0.distcp)
  std::string dir;        // torch: mp_rank_TT[_PPP][_EEE]
  std::vector<std::vector<MegatronPiece>> models;      // torch: per VPP chunk; torch_dist: one
  std::vector<std::vector<std::string>> extra_states;  // per VPP chunk, like models
};

struct MegatronRankLayout {
  std::vector<MegatronRankFile> files;  // ranks with something to write, by rank
  std::int64_t world_size = 1;
  std::string description;  // "TP 2 x PP 2 x EP 1, torch_dist, stacked layers, ..."
};

// The checks a user needs before anything is written: TP divides heads, query groups and the
// ffn size; EP divides the experts; PP (x VPP) splits the layers. Errors name the sizes.
Status check_megatron_parallel(const MegatronParallel& parallel, std::int64_t heads,
                               std::int64_t groups, std::int64_t ffn, std::int64_t moe_ffn,
                               const MegatronModelFacts& facts);

// The pieces of `tensors` (canonical global tensors) for this layout.
Result<MegatronRankLayout> layout_megatron(const std::vector<LogicalTensor>& tensors,
                                           const MegatronModelFacts& facts,
                                           const MegatronParallel& parallel, MegatronSpec spec,
                                           MegatronFormat format);

}  // namespace ckptstream
