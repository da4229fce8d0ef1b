// Where a Megatron checkpoint is, and which of its two formats (docs/formats/megatron.md §0, §2.1):
//
//   <save_dir>/latest_checkpointed_iteration.txt   an integer ("50") or the word "release"
//   <save_dir>/iter_0000050/ or release/           'iter_{:07d}'
//     torch_dist: metadata.json {"sharded_backend": "torch_dist", ...} + .metadata + __R_K.distcp
//     legacy:     mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt (or model_rng.pt; verl: model.pt)
//   verl:            <actor>/dist_ckpt/ (torch_dist), <actor>/huggingface/, also
//   <actor>/model/dist_ckpt Megatron-Bridge: an iteration directory with run_config.yaml beside the
//   torch_dist files NeMo 2:          <ckpt>/weights/ (torch_dist, keys prefixed "module.") +
//   <ckpt>/context/
//
// The legacy directory names do not say by themselves what their numbers are: mp_rank_00_001 is
// pipeline stage 1 (PP > 1, EP = 1) or expert rank 1 (PP = 1, EP > 1). megatron_rank_dirs()
// resolves them with the parallel sizes that the pickled `args` give, never by guessing.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/result.h"

namespace ckptstream {

enum class MegatronFormat { kTorchDist, kLegacy };

struct MegatronLayout {
  MegatronFormat format = MegatronFormat::kTorchDist;
  std::filesystem::path checkpoint_dir;         // holds metadata.json, or the mp_rank_* dirs
  std::optional<std::int64_t> iteration;        // from the directory name; 0 for release/
  std::optional<std::filesystem::path> hf_dir;  // a huggingface/ beside it (verl)
  bool keys_under_module = false;               // NeMo 2: model keys start with "module."
  std::vector<std::string> notes;               // how it was found
};

// The Megatron checkpoint in or below `dir`: a save directory (its tracker file names the
// iteration; `iteration` picks another), an iteration directory, or the layouts of verl,
// Megatron-Bridge and NeMo 2. nullopt when `dir` shows no sign of Megatron; an error naming
// what is wrong when it does but is broken (a tracker naming a missing iteration, ...).
Result<std::optional<MegatronLayout>> find_megatron_checkpoint(
    const std::filesystem::path& dir, std::optional<std::int64_t> iteration = std::nullopt);

// A legacy rank directory's numbers: "mp_rank_01_002_003" -> {1, 2, 3}; nullopt for another
// name.
std::optional<std::vector<std::int64_t>> parse_mp_rank_name(std::string_view name);

struct MegatronRankDir {
  std::filesystem::path dir;
  std::int64_t tp = 0;
  std::int64_t pp = 0;
  std::int64_t ep = 0;
};

// The legacy rank directories of `checkpoint_dir` with their (tp, pp, ep), given the parallel
// sizes of the run (from `args`): names with two numbers are a pipeline stage when pp_size > 1,
// an expert rank otherwise. Each must lie inside the sizes, and each (tp, pp, ep) appear once;
// the set need not be a full grid (expert tensor parallelism differs from TP), but every
// pipeline stage must be there. In (pp, ep, tp) order.
Result<std::vector<MegatronRankDir>> megatron_rank_dirs(const std::filesystem::path& checkpoint_dir,
                                                        std::int64_t tp_size, std::int64_t pp_size,
                                                        std::int64_t ep_size);

}  // namespace ckptstream
