// verl FSDP checkpoints (docs/formats/verl.md §1): a role directory
// (.../global_step_N/actor) holding model_world_size_{W}_rank_{R}.pt (older: model_rank_{R}.pt),
// one torch.save file per rank whose values are DTensors (FSDP2, or FSDP1 with a device mesh) or
// plain tensors (W = 1, replicated buffers); fsdp_config.json {"FSDP_version", "world_size"};
// huggingface/ with config.json, tokenizer and generation config; optim_* and extra_state_*
// files, never opened here.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "core/interrupt.h"
#include "formats/source_model.h"
#include "plan/plan.h"
#include "torch/torch_checkpoint.h"

namespace ckptstream {

struct FsdpCheckpoint {
  std::filesystem::path dir;
  int world_size = 0;
  int fsdp_version = 0;                           // 0 when fsdp_config.json is absent
  std::vector<std::filesystem::path> rank_files;  // index = rank
  std::optional<std::filesystem::path> hf_dir;    // <dir>/huggingface, when present
  std::vector<std::string> notes;                 // how the layout was found, for the user
  // torch.save records the name each file was saved as; a rank file whose recorded name is
  // another rank's (files renamed or swapped) is refused, unless this is set.
  bool accept_renamed_rank_files = false;
};

// Finds W (fsdp_config.json, else the file names) and every rank's model file; a missing or
// mismatched rank is an error naming it.
Result<FsdpCheckpoint> find_fsdp_checkpoint(const std::filesystem::path& dir);

// The reader of the table (source_model.h): find_fsdp_checkpoint, nullopt without any rank file
// name in `dir` (empty) unless `required`; reading merges the ranks (merge_fsdp_tensors).
Result<FoundCheckpoint> find_verl_fsdp(const std::filesystem::path& dir, bool required);

// Reads every rank file's metadata and expresses each state-dict entry as one logical tensor
// whose fragments are the ranks' local shards at their global offsets (DTensor placements:
// Shard(d) with torch.chunk semantics, Replicate, 2-d (ddp, fsdp) meshes read from one
// replica), checked against the DTensorSpec's global shape and dtype and for exact tiling.
// Plain tensors must be identical on every rank and are taken once. Unsupported placements
// (Partial, _StridedShard, a tp mesh dimension) are clear errors naming the tensor. Rank files
// are parsed on up to `threads` threads (0: one per core), that many at a time; `options` say
// how (a plan that reads no data may sample the local headers).
// `interrupt` is looked at between rank files.
Result<SourceTensors> merge_fsdp_tensors(const FsdpCheckpoint& checkpoint, unsigned threads = 0,
                                         const TorchReadOptions& options = {},
                                         const InterruptFlag* interrupt = nullptr);

// Rank -> flat index (row-major) of the mesh coordinate whose shards the rank holds. FSDP2 shards
// by the rank's index in the process group of each mesh dim, and torch sorts a group's ranks,
// while a DTensor's coordinate is the rank's place in the mesh tensor: the two agree for meshes
// made by init_device_mesh (ranks in order), not for DeviceMesh("cpu", [1, 0]), where real FSDP2
// gives rank 0 the first rows (fixture mesh_reversed). nullopt where two ranks would hold the
// same shards. `mesh.ranks` must hold 0 .. n-1 once each, n the product of `mesh.shape` (>= 1).
std::optional<std::vector<std::size_t>> fsdp_shard_positions(const DeviceMeshInfo& mesh);

}  // namespace ckptstream
