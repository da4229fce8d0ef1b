// Packed Mixture-of-Experts weights -> the per-expert tensors transformers' save_pretrained writes.
//
// transformers 5 keeps the experts of an MoE block packed in one parameter per projection, so the
// state dict of a live model (and hence an FSDP checkpoint) holds, per MoE layer:
//   ...experts.gate_up_proj [E, 2F, H]   gate rows [0, F), up rows [F, 2F) of every expert
//   ...experts.down_proj    [E, H, F]
// On save, transformers reverts its conversion mapping (core_model_loading.py,
// revert_weight_conversion): it sorts the whole state dict by dot_natural_key (dot-separated
// parts, numbers numerically), splits each packed tensor into one tensor per expert (Chunk on
// dim 1, then SplitModulelist on dim 0, which also squeezes size-1 dims), and renames keys back to
// the on-disk names of the architecture (Mixtral: .mlp. -> .block_sparse_moe.). A packed tensor's
// outputs take its place in the sorted order, part by part, expert by expert:
//   mixtral  layers.N.mlp.experts.gate_up_proj ->
//   layers.N.block_sparse_moe.experts.{0..E-1}.w1.weight,
//                                                  then ...experts.{0..E-1}.w3.weight   [F, H] each
//            layers.N.mlp.experts.down_proj    -> ...block_sparse_moe.experts.{0..E-1}.w2.weight
//            [H, F]
//   qwen2_moe (Qwen2/3-MoE, DeepSeek-V2/V3, OLMoE, GLM-4-MoE, ...):
//   mlp.experts.E.{gate,up,down}_proj.weight
// The table in experts.cc lists every architecture; tests/fixtures/moe holds real transformers
// output for most of them. Architectures whose on-disk format is packed too (gpt-oss, Llama 4,
// GraniteMoE, JetMoE, DBRX) pass through unchanged; Qwen3-VL-MoE keeps its packed tensors but is
// written in transformers' sorted order.
#pragma once

#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "formats/hf_config.h"
#include "plan/plan.h"

namespace ckptstream {

// Replaces every packed expert tensor of `config`'s architecture by its per-expert tensors (views
// built with select/narrow: no byte moves), renames and orders all tensors as transformers 5's
// save_pretrained does, and says what it did in `notes`. Returned unchanged: checkpoints with no
// packed expert tensor (already per-expert, or not MoE), and architectures whose on-disk format
// is packed. Errors: packed expert tensors in an architecture without a known mapping, or whose
// shape disagrees with config.json (expert count, hidden size, rank). The caller implements
// --keep-packed-experts by not calling this.
Result<std::vector<LogicalTensor>> unpack_packed_experts(std::vector<LogicalTensor> tensors,
                                                         const HfConfig& config,
                                                         std::vector<std::string>& notes);

// transformers' dot_natural_key order: compares dot-separated parts, all-digit parts as numbers
// (before any word part), others bytewise; a name that is a prefix of another comes first.
bool dot_natural_less(const std::string& a, const std::string& b);

}  // namespace ckptstream
