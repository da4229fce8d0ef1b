// torch.distributed.checkpoint (DCP) directories as a whole (docs/formats/torch.md §4,
// megatron.md §1.3 and §5.2): `.metadata` + `__R_K.distcp` written by dcp.save (FSDP, accelerate,
// RLinf, verl's DCP mode, torch_save_to_dcp), and RLinf's layout around them:
//
//   global_step_N/actor/dcp_checkpoint/{.metadata, __R_0.distcp}    {"fsdp_checkpoint": {model,
//                                                                     optimizers, lr_schedulers,
//                                                                     fsdp_version, rng}}
//   global_step_N/actor/model_state_dict/full_weights.pt           torch.save of the full model
//
// Each tensor of the state dict is one logical tensor whose fragments are its saved chunks at
// their global offsets; chunks must tile it exactly. Byte items (pickled Python objects) and
// optimizer state are never read.
//
// Which keys are the model (read_dcp_tensors):
//   1. DcpOptions::prefix, when given ("model" and "model." are the same): the tensors whose key
//      starts with it, prefix removed.
//   2. Otherwise, among the tensor keys that are not optimizer or scheduler state (see below):
//      a. if they all start with "fsdp_checkpoint.model." (RLinf) or "app.model.", that prefix;
//      b. if they all start with "model." and either the state dict has entries outside "model."
//         (an app state such as {"model": ..., "optim": ..., "step": ...}) or some key continues
//         with "model." after it ({"model": causal_lm.state_dict()} gives "model.model.layers..."),
//         the prefix "model.";
//      c. else no prefix: a plain model state dict ("model.layers.0...", "lm_head.weight").
//   Optimizer and scheduler state, always excluded: keys with a component "optim", "optimizer",
//   "optimizers", "optim_state", "lr_scheduler" or "lr_schedulers", and keys whose last
//   component is "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer" or "step".
//   Then leading "_orig_mod." (torch.compile) and "module." (DDP) components are removed from
//   what remains of each key. The notes say which prefix was taken and what was skipped.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/result.h"
#include "core/interrupt.h"
#include "formats/source_model.h"

namespace ckptstream {

namespace dcp {
struct Metadata;
}

// Which entries of a DCP state dict are the model's tensors, and what they are called: the rule
// above for a model state dict (model_state_dict_keys); Megatron's dist_ckpt brings its own.
struct DcpKeyPolicy {
  // Chosen once per checkpoint from its metadata: only keys starting with it are the model's;
  // a note says why.
  std::function<std::string(const dcp::Metadata&, std::vector<std::string>& notes)> prefix;
  // Entries never read, counted in a note (optimizer and scheduler state).
  std::function<bool(std::string_view fqn)> skip;
  // The tensor's name from what follows the prefix.
  std::function<std::string(std::string_view key)> rename;
  // Optional: shown the metadata once, for what a format keeps beside its tensors (megatron-core's
  // common_state byte item, which holds the run's args).
  std::function<void(const dcp::Metadata&)> inspect;
};
// The rule above; `prefix`: the app-state prefix given (--prefix), nullopt to detect it.
DcpKeyPolicy model_state_dict_keys(std::optional<std::string> prefix);

struct DcpOptions {
  std::optional<std::string> prefix;  // the app-state prefix of the model keys; nullopt: detect
  std::filesystem::path scratch_dir;  // where compressed (zstd) items are decoded to
  unsigned threads = 0;               // items read at once (0: one per core)
  const InterruptFlag* interrupt = nullptr;  // looked at between batches of items
};

// Where the checkpoint of a directory is: `dir` itself, `dir/dcp_checkpoint` or
// `dir/actor/dcp_checkpoint` (RLinf) holding .metadata; RLinf's model_state_dict/full_weights.pt
// next to it (or under dir/actor) when present.
struct DcpLayout {
  std::optional<std::filesystem::path> dcp_dir;       // holds .metadata
  std::optional<std::filesystem::path> full_weights;  // RLinf's gathered torch.save model
  std::vector<std::string> notes;
};

Result<DcpLayout> find_dcp_checkpoint(const std::filesystem::path& dir);

// The reader of the table (source_model.h): find_dcp_checkpoint, nullopt when nothing of it is
// there (empty) unless `required`; reading takes read_dcp_layout with model_state_dict_keys.
Result<FoundCheckpoint> find_dcp(const std::filesystem::path& dir, bool required);

// The model tensors of the checkpoint in `dir`, in state-dict order (dtype == source_dtype). With
// only full_weights.pt (no .metadata), its tensors, one fragment each. Decoded zstd items are
// scratch files under options.scratch_dir, listed in `inputs`. Errors name the file and fqn:
// a corrupt .metadata or item, a truncated .distcp, overlapping, missing or out-of-bounds
// chunks, a chunk whose dtype or shape differs from the metadata, an unknown transform.
Result<SourceTensors> read_dcp_tensors(const std::filesystem::path& dir, const DcpOptions& options);
// The same for a layout found already.
Result<SourceTensors> read_dcp_layout(const DcpLayout& layout, const DcpOptions& options);

// The entries of the DCP checkpoint in `dir` (holding .metadata) that `keys` selects, as logical
// tensors: the DCP entry reader that readers of DCP-based formats (Megatron's torch_dist) share.
Result<SourceTensors> read_dcp_entries(const std::filesystem::path& dir, const DcpOptions& options,
                                       const DcpKeyPolicy& keys);

}  // namespace ckptstream
