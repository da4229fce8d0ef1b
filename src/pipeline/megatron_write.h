// Hugging Face model -> Megatron-Core checkpoint (convert --to megatron): the orchestration of
// map_hf_to_megatron (names), layout_megatron (the ranks' pieces) and the file writers (DCP for
// torch_dist, torch.save zips for the legacy format), as one Plan that write_model runs and
// commits atomically like any other output.
//
// What is written (docs/formats/megatron.md §0.1, §1.1, §1.7, §2):
//   layout megatron-lm   OUT/latest_checkpointed_iteration.txt ("release") + OUT/release/...
//   layout flat          the checkpoint files straight in OUT
//   torch_dist           metadata.json, .metadata, __{rank}_0.distcp per writing rank; the common
//                        state (args Namespace, checkpoint_version 3.0, iteration 0) as the byte
//                        item common_state/shard_0_1 in rank 0's file, every _extra_state object
//   torch                mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt: {args, checkpoint_version,
//                        iteration, model | model0..model{V-1}} (OrderedDict state dicts)
#pragma once

#include <filesystem>
#include <string>

#include "ckptstream/result.h"
#include "mapping/megatron_parallel.h"
#include "pipeline/merge_plan.h"

namespace ckptstream {

struct MegatronWriteOptions {
  MegatronParallel parallel;
  MegatronSpec spec = MegatronSpec::kTransformerEngine;
  MegatronFormat format = MegatronFormat::kTorchDist;
  bool flat = false;                 // no tracker / release directory
  std::int64_t vocab_divisor = 128;  // --make-vocab-size-divisible-by
  std::string dtype = "auto";        // of floating-point weights
  std::size_t sampled_headers = 0;   // unused (HF headers are small)
};

// The plan of the Megatron checkpoint of the Hugging Face model in `hf_dir`. Errors: no model or
// config.json there, an unknown family, tensors the config does not explain or lacks, a layout
// the model's sizes do not allow (TP vs heads, groups, ffn; EP vs experts; PP vs layers).
Result<MergePlan> plan_hf_to_megatron(const std::filesystem::path& hf_dir,
                                      const MegatronWriteOptions& options);

}  // namespace ckptstream
