// Megatron-Core checkpoints as a source of Hugging Face models (docs/formats/megatron.md): the
// reader of the table (source_model.h) for both formats that megatron_layout.h finds.
//
//   torch_dist  the DCP entries (formats/dcp_checkpoint.h) whose keys are the model's: global
//               tensors, stacked layers with a prepended layer axis ("decoder.layers.X" [L, ...]),
//               experts with a prepended expert axis ("...mlp.experts.experts.linear_fc1.weight"
//               [L, E, 2F, H]), or per-layer keys ("decoder.layers.3.X"). Optimizer, rng,
//               rerun-state and _extra_state entries are never read.
//   legacy      mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt per rank: local tensors under "model"
//               (or "model0".."modelV-1" per virtual pipeline chunk) whose layer numbers are local
//               to the stage and chunk, and whose TP-split dims hold 1/TP of the tensor (the
//               parallel sizes come from the pickled `args`, never from the file names alone).
//
// Both become one canonical set of global tensors, named per layer and per expert:
//   decoder.layers.{i}.<param>                 i: global layer
//   decoder.layers.{i}.mlp.experts.{e}.linear_fc{1,2}.weight      e: global expert
//   embedding.word_embeddings.weight, output_layer.weight, decoder.final_layernorm.weight,
//   mtp.layers.{k}.<param>
// built with the views of plan/views.h (select a layer or expert of a stacked tensor; concat TP
// shards on their split dim; per-rank [gate_r; up_r] halves regrouped as [gate; up]), which the
// family tables of mapping/megatron_hf.h then name for Hugging Face.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ckptstream/result.h"
#include "formats/megatron_args.h"
#include "formats/megatron_layout.h"
#include "formats/source_model.h"

namespace ckptstream {

struct MegatronTensors {
  // Canonical names (above), global shapes; the notes say what was skipped and by which rule.
  SourceTensors tensors;
  std::optional<MegatronArgs> args;  // the run's arguments, where the checkpoint keeps them
};

// The number a megatron-core key component starts with, and what follows its dot: "12.rest" ->
// (12, "rest"), "12" -> (12, ""); nullopt when `text` does not start with a number (the layer,
// expert and MTP numbers of the canonical names).
std::optional<std::pair<std::int64_t, std::string_view>> megatron_key_number(std::string_view text);

// How megatron-core splits a parameter across its tensor-parallel group (TP; expert TP for
// experts), §3a: rows (column-parallel), columns (row-parallel), gated rows (each rank holds
// [gate_r; up_r]), or whole on every rank. `name` ends with the parameter (legacy, canonical
// or sharded keys alike); `rows` is its first dim (a one-row output layer is a value head, a
// plain Linear every rank holds whole); `gated_mlp`: SwiGLU (a vision projection never is);
// `local_spec`: MLA's down projections are split (Transformer Engine duplicates them).
enum class MegatronTpSplit { kReplicated, kRows, kColumns, kGatedRows };
MegatronTpSplit megatron_tp_split(std::string_view name, std::int64_t rows, bool gated_mlp,
                                  bool local_spec);

// The canonical tensors of the checkpoint `layout` describes.
Result<MegatronTensors> read_megatron_tensors(const MegatronLayout& layout,
                                              const ReadOptions& options);

// The reader of the table: find_megatron_checkpoint, then read_megatron_tensors; the model it
// returns keeps megatron-core names (SourceModel::Naming::kMegatron), which the orchestration
// names for Hugging Face with the model's config.json (--hf-config, or the checkpoint's own
// huggingface/ directory).
Result<FoundCheckpoint> find_megatron(const std::filesystem::path& dir, bool required);

}  // namespace ckptstream
