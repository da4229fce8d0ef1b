// Megatron-LM's training arguments as a checkpoint keeps them: the `args` entry of the common
// state (legacy model_optim_rng.pt, torch_dist common.pt / common_state) is a pickled
// argparse.Namespace (docs/formats/megatron.md §1.7, §2.2). The pickle VM reads it as an Object
// whose BUILD state is the Namespace's __dict__; Megatron enums and torch dtypes inside it stay
// names. Only the fields that fix the layout of the weights are read.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "ckptstream/result.h"

namespace ckptstream {

namespace pickle {
struct Value;
}

struct MegatronArgs {
  // Parallel sizes of the run that saved.
  std::int64_t tp = 1;
  std::int64_t pp = 1;
  std::int64_t ep = 1;
  std::int64_t etp = 1;  // expert tensor parallel (defaults to tp)
  std::int64_t vpp = 0;  // virtual pipeline chunks per stage; 0 without VPP
  // Uneven pipeline: layers of the first / last stage (decoder_first_pipeline_num_layers, ...).
  std::optional<std::int64_t> first_stage_layers;
  std::optional<std::int64_t> last_stage_layers;
  bool account_for_embedding_in_pipeline_split = false;
  bool account_for_loss_in_pipeline_split = false;
  std::string pipeline_layout;  // pipeline_model_parallel_layout, "" when unset
  // Model sizes.
  std::int64_t num_layers = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_query_groups = 0;  // = heads without group_query_attention
  std::int64_t kv_channels = 0;
  std::int64_t ffn_hidden_size = 0;
  std::int64_t num_experts = 0;  // 0: dense
  std::int64_t moe_ffn_hidden_size = 0;
  std::int64_t padded_vocab_size = 0;
  std::int64_t mtp_num_layers = 0;
  bool gated_mlp = false;  // swiglu: linear_fc1 holds [gate; up]
  // transformer_impl "local": MLA's down projections are column-parallel (split across TP),
  // where Transformer Engine's are duplicated on every rank.
  bool local_spec = false;
  bool untied_output = false;
  double checkpoint_version = 0;  // of the file, not of args; set by the reader
};

// The model sizes a run's configuration file gives, for the cross-check with config.json where
// the checkpoint keeps no `args` (sizes absent stay 0, parallel sizes 1):
//   verl:             <actor>/transformer_config.json, megatron-core's TransformerConfig as JSON
//                     (num_layers, hidden_size, num_attention_heads, num_query_groups,
//                     num_moe_experts, ...)
//   Megatron-Bridge:  <iteration>/run_config.yaml, whose `model:` section holds the same names
//                     ("  num_layers: 28"); only that section's plain integer lines are read.
Result<MegatronArgs> read_transformer_config_json(const std::filesystem::path& path);
Result<MegatronArgs> read_run_config_yaml(const std::filesystem::path& path);

// The fields above from the Namespace object `args`; `where` names the file for messages.
// Missing sizes are an error naming the field (a checkpoint saved without them is not one this
// reader understands).
Result<MegatronArgs> read_megatron_args(const pickle::Value& args, const std::string& where);

// The global index of local layer 0 of pipeline stage `pp_rank`, virtual chunk `vp_stage` (0
// without VPP), as megatron-core's get_transformer_layer_offset computes it (§3e): even splits,
// uneven first/last stages, embedding/loss accounted in the split. A pipeline layout string is
// refused (unsupported), naming it.
Result<std::int64_t> megatron_layer_offset(const MegatronArgs& args, std::int64_t pp_rank,
                                           std::int64_t vp_stage);

}  // namespace ckptstream
