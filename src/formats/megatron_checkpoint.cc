#include "formats/megatron_checkpoint.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <map>
#include <set>
#include <span>
#include <thread>

#include "dcp/dcp_metadata.h"
#include "formats/dcp_checkpoint.h"
#include "formats/hf_config.h"
#include "formats/rank_files.h"
#include "io/input_file.h"
#include "pickle/value.h"
#include "plan/views.h"
#include "torch/torch_checkpoint.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kLayers = "decoder.layers.";
constexpr std::string_view kStackedExperts = "mlp.experts.experts.";

// Keys of a torch_dist checkpoint that are not model weights (§1.5): never read.
bool is_training_state(std::string_view fqn) {
  return fqn.starts_with("optimizer.") || fqn.starts_with("chained_") ||
         fqn.starts_with("rng_state") || fqn.starts_with("rerun_state_machine") ||
         fqn.starts_with("common_state") || fqn.find("_extra_state") != std::string_view::npos;
}

// A per-layer tensor whose first dim is the expert axis ("...mlp.experts.experts.linear_fc1.weight"
// [E, 2F, H]) becomes one tensor per expert: "...mlp.experts.{e}.linear_fc1.weight".
void add_per_expert(LogicalTensor tensor, std::vector<LogicalTensor>& out) {
  auto at = tensor.name.find(kStackedExperts);
  if (at == std::string::npos || tensor.shape.empty()) {
    out.push_back(std::move(tensor));
    return;
  }
  std::string head = tensor.name.substr(0, at) + "mlp.experts.";
  std::string tail = tensor.name.substr(at + kStackedExperts.size());
  for (std::int64_t e = 0; e < tensor.shape[0]; ++e) {
    LogicalTensor one = select(tensor, 0, e);
    one.name = head + std::to_string(e) + "." + tail;
    out.push_back(std::move(one));
  }
}

// Where "decoder.layers." starts in a key: at its start, or after a model's prefix
// ("language_model.", "vision_model." of a vision-language model); npos if nowhere.
std::size_t layers_at(std::string_view name) {
  if (name.starts_with(kLayers)) return 0;
  auto at = name.find(std::string(".") + std::string(kLayers));
  return at == std::string_view::npos ? at : at + 1;
}

// torch_dist: stacked layers (a leading layer axis) and expert axes made per layer and expert.
std::vector<LogicalTensor> unstack(std::vector<LogicalTensor> tensors) {
  std::vector<LogicalTensor> out;
  for (auto& t : tensors) {
    std::string_view name = t.name;
    auto at = layers_at(name);
    if (at == std::string_view::npos || megatron_key_number(name.substr(at + kLayers.size())) ||
        t.shape.empty()) {
      add_per_expert(std::move(t), out);
      continue;
    }
    std::string head(name.substr(0, at + kLayers.size()));
    std::string rest(name.substr(at + kLayers.size()));
    for (std::int64_t layer = 0; layer < t.shape[0]; ++layer) {
      LogicalTensor one = select(t, 0, layer);
      one.name = head + std::to_string(layer) + "." + rest;
      add_per_expert(std::move(one), out);
    }
  }
  return out;
}

// The run's args from a torch.save file holding Megatron's common state: common.pt (a dict), or
// the common_state byte item (a list of one dict). nullopt when it keeps none (Megatron-Bridge).
Result<std::optional<MegatronArgs>> args_in_common_state(const fs::path& file) {
  CKPT_ASSIGN_OR_RETURN(TorchCheckpoint common, read_torch_file(file));
  const pickle::Value* root = common.root.get();
  if (root && root->is_sequence() && !root->items().empty()) root = root->items()[0];
  auto args = root ? root->find("args") : nullptr;
  if (!args) return std::optional<MegatronArgs>();
  CKPT_ASSIGN_OR_RETURN(MegatronArgs parsed, read_megatron_args(*args, file.string()));
  return std::optional<MegatronArgs>(parsed);
}

// megatron-core >= 0.19 keeps the common state as the byte item common_state/shard_0_1 of the
// .distcp files: its bytes are copied to a scratch file (a few KB) and read as a torch.save file.
Result<std::optional<MegatronArgs>> args_in_common_item(const fs::path& dir,
                                                        const dcp::StorageInfo& item,
                                                        const fs::path& scratch_dir) {
  if (!item.transforms.empty() || item.length > (64u << 20))
    return std::optional<MegatronArgs>();  // compressed or huge: not worth a cross-check
  CKPT_ASSIGN_OR_RETURN(InputFile file, InputFile::open(dir / item.relative_path));
  std::vector<std::byte> bytes(item.length);
  CKPT_TRY(file.read_at(item.offset, bytes));
  std::error_code ec;
  fs::create_directories(scratch_dir, ec);
  fs::path copy = scratch_dir / "megatron_common_state.pt";
  {
    std::FILE* out = std::fopen(copy.c_str(), "wb");
    if (!out) return io_error(copy.string() + ": cannot write");
    bool ok = std::fwrite(bytes.data(), 1, bytes.size(), out) == bytes.size();
    ok = std::fclose(out) == 0 && ok;
    if (!ok) return io_error(copy.string() + ": cannot write");
  }
  auto args = args_in_common_state(copy);
  fs::remove(copy, ec);
  if (!args) return args.error().with_context(dir.string() + " (common_state item)");
  return args;
}

Result<MegatronTensors> read_torch_dist(const MegatronLayout& layout, const ReadOptions& options) {
  DcpOptions dcp;
  dcp.scratch_dir = options.scratch_dir;
  dcp.threads = options.threads;
  dcp.interrupt = options.interrupt;
  DcpKeyPolicy keys;
  bool under_module = layout.keys_under_module;
  std::optional<dcp::StorageInfo> common_item;  // megatron-core >= 0.19's common state
  keys.inspect = [&common_item](const dcp::Metadata& md) {
    for (const auto& e : md.entries)
      if (e.kind == dcp::StateDictEntry::Kind::kBytes && e.fqn.starts_with("common_state/") &&
          e.storage)
        common_item = *e.storage;
  };
  keys.prefix = [under_module](const dcp::Metadata&, std::vector<std::string>& notes) {
    notes.push_back(under_module ? "model keys: megatron-core names under 'module.'"
                                 : "model keys: megatron-core names");
    return std::string(under_module ? "module." : "");
  };
  keys.skip = is_training_state;
  keys.rename = [](std::string_view key) { return std::string(key); };
  MegatronTensors out;
  CKPT_ASSIGN_OR_RETURN(out.tensors, read_dcp_entries(layout.checkpoint_dir, dcp, keys));
  out.tensors.tensors = unstack(std::move(out.tensors.tensors));
  CKPT_ASSIGN_OR_RETURN(bool has_common_pt,
                        regular_file_exists(layout.checkpoint_dir / "common.pt"));
  if (has_common_pt) {
    CKPT_ASSIGN_OR_RETURN(out.args, args_in_common_state(layout.checkpoint_dir / "common.pt"));
  } else if (common_item) {
    CKPT_ASSIGN_OR_RETURN(
        out.args, args_in_common_item(layout.checkpoint_dir, *common_item,
                                      options.scratch_dir.empty() ? fs::temp_directory_path()
                                                                  : options.scratch_dir));
  }
  return out;
}

// config.json and the run's args must describe one model: a mismatch is an error naming both.
// `source` says where the run's sizes come from ("the checkpoint's args",
// "transformer_config.json"); sizes it does not give (0) are not compared.
Status cross_check(const MegatronArgs& args, const HfConfig& config, const std::string& source) {
  const HfTextConfig& text = config.language();
  std::string where = config.path.string() + " and " + source + " disagree: ";
  auto same = [&](std::string_view hf_key, std::optional<std::int64_t> hf, std::string_view arg,
                  std::int64_t value) -> Status {
    if (hf && value > 0 && *hf != value)
      return invalid_input(where + std::string(hf_key) + " " + std::to_string(*hf) + " vs " +
                           std::string(arg) + " " + std::to_string(value));
    return {};
  };
  CKPT_TRY(same("num_hidden_layers", text.num_hidden_layers, "num_layers", args.num_layers));
  CKPT_TRY(same("hidden_size", text.hidden_size, "hidden_size", args.hidden_size));
  CKPT_TRY(same("num_attention_heads", text.num_attention_heads, "num_attention_heads",
                args.num_attention_heads));
  if (!text.kv_lora_rank)  // MLA has no query groups
    CKPT_TRY(same("num_key_value_heads", text.num_key_value_heads, "num_query_groups",
                  args.num_query_groups));
  if (args.num_experts > 0 || config.num_experts())
    CKPT_TRY(same("experts", config.num_experts(), "num_experts", args.num_experts));
  if (text.vocab_size && args.padded_vocab_size && args.padded_vocab_size < *text.vocab_size)
    return invalid_input(where + "vocab_size " + std::to_string(*text.vocab_size) +
                         " vs padded_vocab_size " + std::to_string(args.padded_vocab_size) +
                         " (fewer rows than the vocabulary)");
  return {};
}

// ---- legacy (mp_rank_*) ----

struct Shard {
  std::int64_t tp = 0;  // its rank in the group that splits it (TP, or expert TP)
  std::int64_t pp = 0;  // the pipeline stage of its file
  LogicalTensor tensor;
};

// The global tensor `name` from its TP shards (one per rank of `size`), as the split rule says.
Result<LogicalTensor> join_shards(const std::string& name, std::vector<Shard> shards,
                                  std::int64_t size, bool gated, bool local_spec,
                                  const std::string& where) {
  std::sort(shards.begin(), shards.end(),
            [](const Shard& a, const Shard& b) { return a.tp < b.tp; });
  const Shape& first = shards.front().tensor.shape;
  using Split = MegatronTpSplit;
  Split split = megatron_tp_split(name, first.empty() ? 0 : first[0], gated, local_spec);
  if (split == Split::kReplicated || size == 1) {
    // Every rank holds the whole tensor: rank 0's copy.
    if (shards.front().tp != 0)
      return invalid_input(where + ": '" + name + "' is missing from tensor-parallel rank 0");
    for (const auto& s : shards)
      if (s.tensor.shape != shards.front().tensor.shape)
        return invalid_input(where + ": '" + name + "' has shape " +
                             shape_text(shards.front().tensor.shape) + " on TP rank 0 but " +
                             shape_text(s.tensor.shape) + " on TP rank " + std::to_string(s.tp));
    LogicalTensor t = std::move(shards.front().tensor);
    t.name = name;
    return t;
  }
  if (static_cast<std::int64_t>(shards.size()) != size)
    return invalid_input(where + ": '" + name + "' is on " + std::to_string(shards.size()) +
                         " of " + std::to_string(size) + " tensor-parallel ranks");
  for (std::int64_t r = 0; r < size; ++r)
    if (shards[r].tp != r)
      return invalid_input(where + ": '" + name + "' appears twice on TP rank " +
                           std::to_string(shards[r].tp));
  std::vector<LogicalTensor> parts;
  if (split == Split::kGatedRows) {
    // Each rank holds [gate_r; up_r]: the global tensor is [gate_0..gate_n; up_0..up_n] (§3c).
    std::vector<LogicalTensor> ups;
    for (auto& s : shards) {
      auto rows = s.tensor.shape.empty() ? 0 : s.tensor.shape[0];
      if (rows % 2)
        return invalid_input(where + ": '" + name + "' on TP rank " + std::to_string(s.tp) +
                             " has an odd number of rows (" + std::to_string(rows) +
                             "), not [gate; up] halves");
      parts.push_back(narrow(s.tensor, 0, 0, rows / 2));
      ups.push_back(narrow(s.tensor, 0, rows / 2, rows / 2));
    }
    for (auto& u : ups) parts.push_back(std::move(u));
  } else {
    for (auto& s : shards) parts.push_back(std::move(s.tensor));
  }
  auto joined = concat(parts, split == Split::kColumns ? 1 : 0, name);
  if (!joined) return joined.error().with_context(where);
  return joined;
}

struct LegacyFile {
  MegatronRankDir rank;
  fs::path path;
};

Result<fs::path> rank_file(const fs::path& dir) {
  for (std::string_view name : {"model_optim_rng.pt", "model_rng.pt", "model.pt"}) {
    CKPT_ASSIGN_OR_RETURN(bool there, regular_file_exists(dir / name));
    if (there) return dir / name;
  }
  return invalid_input(dir.string() + ": no model_optim_rng.pt (nor model_rng.pt, model.pt)");
}

// The rank directory of TP 0, PP 0, EP 0, whose file names the run's parallel sizes.
Result<fs::path> first_rank_dir(const fs::path& checkpoint_dir) {
  std::error_code ec;
  std::optional<fs::path> best;
  for (const auto& entry : fs::directory_iterator(checkpoint_dir, ec)) {
    auto numbers = parse_mp_rank_name(entry.path().filename().string());
    if (!numbers) continue;
    if (std::all_of(numbers->begin(), numbers->end(), [](std::int64_t n) { return n == 0; }))
      best = entry.path();
  }
  if (ec) return io_error(checkpoint_dir.string() + ": cannot list: " + ec.message());
  if (!best)
    return invalid_input(checkpoint_dir.string() +
                         ": no mp_rank_00 directory (tensor, pipeline and expert rank 0)");
  return *best;
}

// "model.decoder.layers.3.x" or "model1.decoder..." -> (virtual chunk, "decoder.layers.3.x").
std::optional<std::pair<std::int64_t, std::string_view>> model_entry(std::string_view name) {
  if (!name.starts_with("model")) return std::nullopt;
  std::string_view rest = name.substr(5);
  if (rest.starts_with(".")) return std::make_pair(std::int64_t{0}, rest.substr(1));
  auto chunk = megatron_key_number(rest);
  if (!chunk || chunk->second.empty()) return std::nullopt;
  return chunk;
}

// Megatron-LM's pre-mcore GPT model (megatron/legacy/model, docs §2.2, §4.6) keeps its tensors
// under language_model: embedding.word_embeddings, encoder (v2.x: transformer).layers.{i}
// (input_norm or input_layernorm, self_attention (very old: attention).query_key_value / .dense,
// post_attention_norm or post_attention_layernorm, mlp.dense_h_to_4h / dense_4h_to_h),
// encoder.final_norm (final_layernorm), output_layer. Their megatron-core names; the name as it
// is for anything else.
std::string mcore_name_of(std::string_view local) {
  constexpr std::string_view kLm = "language_model.";
  if (!local.starts_with(kLm)) return std::string(local);
  std::string_view rest = local.substr(kLm.size());
  if (rest.starts_with("embedding.") || rest.starts_with("output_layer.")) return std::string(rest);
  std::string_view stack;
  for (std::string_view s : {"encoder.", "transformer."})
    if (rest.starts_with(s)) stack = s;
  if (stack.empty()) return std::string(local);  // megatron-core's own language_model.decoder...
  rest.remove_prefix(stack.size());
  for (std::string_view final_norm : {"final_norm.", "final_layernorm."})
    if (rest.starts_with(final_norm))
      return "decoder.final_layernorm." + std::string(rest.substr(final_norm.size()));
  if (!rest.starts_with("layers.")) return std::string(local);
  std::string out = "decoder." + std::string(rest);
  static constexpr std::pair<std::string_view, std::string_view> kRenames[] = {
      {".input_norm.", ".input_layernorm."},
      {".post_attention_norm.", ".pre_mlp_layernorm."},
      {".post_attention_layernorm.", ".pre_mlp_layernorm."},
      {".self_attention.query_key_value.", ".self_attention.linear_qkv."},
      {".attention.query_key_value.", ".self_attention.linear_qkv."},
      {".self_attention.dense.", ".self_attention.linear_proj."},
      {".attention.dense.", ".self_attention.linear_proj."},
      {".mlp.dense_h_to_4h.", ".mlp.linear_fc1."},
      {".mlp.dense_4h_to_h.", ".mlp.linear_fc2."},
  };
  for (auto [from, to] : kRenames) {
    auto at = out.find(from);
    if (at != std::string::npos) out.replace(at, from.size(), to);
  }
  return out;
}

// A rank's fused QKV rows in the order of checkpoint_version >= 2, [heads, 3, head_dim] (one
// head per group, as pre-GQA models are): version 0 keeps [3, heads, head_dim], 1.0
// [heads, head_dim, 3] (Megatron-LM's fix_query_key_value_ordering, as views).
Result<LogicalTensor> qkv_in_current_order(const LogicalTensor& t, const MegatronArgs& args,
                                           const std::string& where) {
  std::int64_t heads = args.tp > 0 ? args.num_attention_heads / args.tp : 0;
  std::int64_t dim = args.kv_channels;
  if (args.num_query_groups != args.num_attention_heads || heads <= 0 || dim <= 0 ||
      t.shape.empty() || t.shape[0] != heads * 3 * dim)
    return invalid_input(where + ": '" + t.name + "' " + shape_text(t.shape) +
                         ": not the QKV rows of " + std::to_string(heads) + " heads of " +
                         std::to_string(dim) + " (checkpoint_version " +
                         std::to_string(args.checkpoint_version) + " orders them per head)");
  bool v0 = args.checkpoint_version < 1.0;
  std::int64_t v0_sizes[] = {3, heads, dim};
  std::int64_t v1_sizes[] = {heads, dim, 3};
  CKPT_ASSIGN_OR_RETURN(LogicalTensor split,
                        unflatten(t, 0,
                                  v0 ? std::span<const std::int64_t>(v0_sizes)
                                     : std::span<const std::int64_t>(v1_sizes)));
  CKPT_ASSIGN_OR_RETURN(LogicalTensor ordered,
                        v0 ? transpose(split, 0, 1) : transpose(split, 1, 2));
  return flatten(ordered, 0, 2);
}

// The canonical name of a legacy tensor of rank `rank`, chunk `vp`; nullopt for one a rule skips
// (Transformer Engine's _extra_state).
Result<std::optional<std::string>> canonical_legacy_name(std::string_view local,
                                                         const MegatronArgs& args,
                                                         const MegatronRankDir& rank,
                                                         std::int64_t vp,
                                                         const std::string& where) {
  if (local.find("_extra_state") != std::string_view::npos) return std::optional<std::string>();
  std::string head;  // the layer's canonical prefix
  std::string rest;  // what follows it
  // A vision-language model's towers sit under "language_model." and "vision_model."; the
  // vision tower is not pipelined (its layers keep their numbers).
  auto at = layers_at(local);
  bool vision = local.starts_with("vision_model.");
  if (at != std::string_view::npos) {
    auto layer = megatron_key_number(local.substr(at + kLayers.size()));
    if (!layer) return invalid_input(where + ": '" + std::string(local) + "' has no layer number");
    std::int64_t offset = 0;
    if (!vision) {
      CKPT_ASSIGN_OR_RETURN(offset, megatron_layer_offset(args, rank.pp, vp));
    }
    std::int64_t global = offset + layer->first;
    if (!vision && global >= args.num_layers)
      return invalid_input(where + ": '" + std::string(local) + "' (pipeline stage " +
                           std::to_string(rank.pp) + ", chunk " + std::to_string(vp) +
                           ") would be layer " + std::to_string(global) + ", but args say " +
                           std::to_string(args.num_layers) + " layers");
    head = std::string(local.substr(0, at + kLayers.size())) + std::to_string(global) + ".";
    rest = std::string(layer->second);
  } else {
    // MTP layers keep their numbers; their inner transformer layer holds experts too.
    rest = std::string(local);
    for (std::string_view inner : {".mtp_model_layer.", ".transformer_layer."}) {
      auto inner_at = rest.find(inner);
      if (rest.starts_with("mtp.layers.") && inner_at != std::string::npos) {
        head = rest.substr(0, inner_at + inner.size());
        rest = rest.substr(inner_at + inner.size());
        break;
      }
    }
  }
  // Experts: SequentialMLP "mlp.experts.local_experts.{i}.", TEGroupedMLP "linear_fc1.weight{i}".
  std::int64_t local_experts = args.num_experts > 0 ? args.num_experts / args.ep : 0;
  constexpr std::string_view kSequential = "mlp.experts.local_experts.";
  constexpr std::string_view kGrouped = "mlp.experts.linear_fc";
  if (rest.starts_with(kSequential)) {
    auto e = megatron_key_number(std::string_view(rest).substr(kSequential.size()));
    if (!e || e->first >= local_experts)
      return invalid_input(where + ": '" + std::string(local) + "': expert number outside the " +
                           std::to_string(local_experts) + " local experts args give");
    rest = "mlp.experts." + std::to_string(rank.ep * local_experts + e->first) + "." +
           std::string(e->second);
  } else if (rest.starts_with(kGrouped)) {
    auto w = rest.find(".weight");
    auto e = w == std::string::npos ? std::nullopt
                                    : megatron_key_number(std::string_view(rest).substr(w + 7));
    if (!e || e->first >= local_experts)
      return invalid_input(where + ": '" + std::string(local) +
                           "': not a grouped expert weight megatron-core writes");
    rest = "mlp.experts." + std::to_string(rank.ep * local_experts + e->first) + "." +
           rest.substr(12, w + 7 - 12);
  } else if (rest.starts_with("mlp.experts.weight") && rest != "mlp.experts.weight1" &&
             rest != "mlp.experts.weight2") {
    return invalid_input(where + ": '" + std::string(local) + "': not a GroupedMLP weight");
  }
  return std::optional<std::string>(head + rest);
}

// The legacy GroupedMLP (megatron-core <= 0.1x, moe_grouped_gemm with the old kernel; §3f) keeps a
// layer's local experts in two tensors transposed relative to nn.Linear, expert-major in memory:
//   weight1 [H, E_local * 2F/etp] = E_local blocks of [H, 2F/etp]   (fc1_e transposed)
//   weight2 [E_local * F/etp, H]  = E_local blocks of [F/etp, H]    (fc2_e transposed)
// Each block is one expert's shard: transposed back, it is what SequentialMLP holds (fc1_e
// [2F/etp, H] = [gate_r; up_r], fc2_e [H, F/etp]), named with the global expert number.
Result<std::vector<LogicalTensor>> grouped_mlp_experts(const LogicalTensor& tensor,
                                                       const MegatronArgs& args,
                                                       const MegatronRankDir& rank,
                                                       const std::string& where) {
  bool fc1 = tensor.name.ends_with("weight1");
  std::int64_t local = args.num_experts > 0 ? args.num_experts / args.ep : 0;
  // "decoder.layers.{l}.mlp.experts." (the name ends with weight1 or weight2)
  std::string head = tensor.name.substr(0, tensor.name.size() - std::string("weight1").size());
  auto fail = [&] {
    return invalid_input(where + ": '" + tensor.name + "' " + shape_text(tensor.shape) +
                         " is not " + std::to_string(local) +
                         " GroupedMLP experts of the hidden size args give (" +
                         std::to_string(args.hidden_size) + ")");
  };
  if (local <= 0 || tensor.shape.size() != 2) return fail();
  std::int64_t rows = tensor.shape[0];
  std::int64_t cols = tensor.shape[1];
  if (fc1 ? (rows != args.hidden_size || cols % local) : (cols != args.hidden_size || rows % local))
    return fail();
  std::int64_t per_expert = fc1 ? cols / local : rows / local;  // 2F/etp or F/etp
  // Expert-major memory: flatten, then [E_local, H, 2F/etp] (fc1) or [E_local, F/etp, H] (fc2).
  CKPT_ASSIGN_OR_RETURN(LogicalTensor flat, flatten(tensor, 0, 1));
  std::int64_t fc1_sizes[] = {local, args.hidden_size, per_expert};
  std::int64_t fc2_sizes[] = {local, per_expert, args.hidden_size};
  CKPT_ASSIGN_OR_RETURN(LogicalTensor blocks,
                        unflatten(flat, 0,
                                  fc1 ? std::span<const std::int64_t>(fc1_sizes)
                                      : std::span<const std::int64_t>(fc2_sizes)));
  std::vector<LogicalTensor> out;
  for (std::int64_t e = 0; e < local; ++e) {
    CKPT_ASSIGN_OR_RETURN(LogicalTensor expert, transpose(select(blocks, 0, e), 0, 1));
    expert.name = head + std::to_string(rank.ep * local + e) +
                  (fc1 ? ".linear_fc1.weight" : ".linear_fc2.weight");
    out.push_back(std::move(expert));
  }
  return out;
}

Result<MegatronTensors> read_legacy(const MegatronLayout& layout, const ReadOptions& options) {
  MegatronTensors out;
  CKPT_ASSIGN_OR_RETURN(fs::path first_dir, first_rank_dir(layout.checkpoint_dir));
  CKPT_ASSIGN_OR_RETURN(fs::path first_path, rank_file(first_dir));
  CKPT_ASSIGN_OR_RETURN(TorchCheckpoint first, read_torch_file(first_path));
  auto args_value = first.root ? first.root->find("args") : nullptr;
  if (!args_value)
    return invalid_input(first_path.string() +
                         ": no 'args' (the run's arguments say its parallel sizes)");
  CKPT_ASSIGN_OR_RETURN(MegatronArgs args, read_megatron_args(*args_value, first_path.string()));
  // As Megatron-LM reads it: absent means 0 (the oldest QKV order).
  if (auto version = first.root->find("checkpoint_version"))
    args.checkpoint_version = version->as_float().value_or(0);
  if (args.etp != 1 && args.etp != args.tp)
    return unsupported(first_path.string() + ": expert tensor parallel size " +
                       std::to_string(args.etp) + " with TP " + std::to_string(args.tp) +
                       " is not supported yet (ETP 1 or ETP = TP are)");
  CKPT_ASSIGN_OR_RETURN(auto ranks,
                        megatron_rank_dirs(layout.checkpoint_dir, args.tp, args.pp, args.ep));
  out.tensors.notes.push_back(
      "legacy Megatron checkpoint: TP " + std::to_string(args.tp) + ", PP " +
      std::to_string(args.pp) + (args.vpp ? " x VPP " + std::to_string(args.vpp) : "") + ", EP " +
      std::to_string(args.ep) + (args.ep > 1 ? " (ETP " + std::to_string(args.etp) + ")" : "") +
      " (from args), " + std::to_string(ranks.size()) + " rank files");

  std::map<std::string, std::vector<Shard>> shards;  // canonical name -> TP shards
  std::vector<std::string> order;
  std::size_t extra_state = 0;
  std::size_t training = 0;
  std::size_t tied_output_copies = 0;
  std::size_t mtp_embedding_copies = 0;
  std::vector<fs::path> paths;
  for (const auto& rank : ranks) {
    CKPT_ASSIGN_OR_RETURN(fs::path path, rank_file(rank.dir));
    paths.push_back(std::move(path));
  }
  // The first file, read whole for its args, is used as it is; the others come through the
  // shared rank-file reader (read ahead, unpickled streaming, memory of a few files).
  bool first_read = !paths.empty() && paths.front() == first_path;
  std::vector<fs::path> others(paths.begin() + (first_read ? 1 : 0), paths.end());
  TorchReadOptions streaming{options.sampled_headers};
  streaming.stream_items = true;
  RankFileReader reader(
      others, options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency()),
      streaming);
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    CKPT_TRY(check_interrupt(options.interrupt));
    const MegatronRankDir& rank = ranks[r];
    const fs::path& path = paths[r];
    TorchCheckpoint file;
    if (r == 0 && first_read) {
      file = std::move(first);
      file.root.reset();  // the pickle graph: args read already, tensors listed
    } else {
      CKPT_ASSIGN_OR_RETURN(file, reader.next());
    }
    std::size_t input = out.tensors.inputs.size();
    out.tensors.inputs.push_back(path);
    std::string where = path.string();
    for (std::size_t i = 0; i < file.tensors.size(); ++i) {
      const TorchTensor& t = file.tensors[i];
      auto entry = model_entry(t.name);
      if (!entry) {
        ++training;
        continue;
      }
      if (args.vpp == 0 && entry->first != 0)
        return invalid_input(where + ": '" + t.name +
                             "' is in a virtual pipeline chunk, but args " +
                             "say no virtual pipeline");
      std::string mcore = mcore_name_of(entry->second);
      CKPT_ASSIGN_OR_RETURN(auto name,
                            canonical_legacy_name(mcore, args, rank, entry->first, where));
      if (!name) {
        ++extra_state;
        continue;
      }
      std::string_view plain = *name;  // without a vision-language model's prefix
      if (plain.starts_with("language_model.")) plain.remove_prefix(15);
      if (plain == "embedding.word_embeddings.weight" && rank.pp != 0) {
        // Multi-token prediction on the last stage embeds there too: megatron-core keeps that
        // stage a copy of the first stage's embedding, in sync as with a tied output layer.
        ++mtp_embedding_copies;
        continue;
      }
      if (plain == "output_layer.weight" && !args.untied_output) {
        ++tied_output_copies;
        continue;
      }
      // Which file holds which shard depends on how the run's ranks were laid out (with expert
      // parallelism the set of files is sparse: TP 2 x EP 2 with ETP 1 saves mp_rank_00_000 and
      // mp_rank_01_001 only), so shards are told apart by their rank in the group that splits
      // them: dense tensors by TP rank (the same in every expert rank's file), experts by expert
      // TP rank (all one with ETP 1). The same shard in another file is a replica, read once; the
      // same shard from two pipeline stages means the layer numbering is wrong.
      LogicalTensor tensor;
      tensor.name = *name;
      tensor.source_dtype = tensor.dtype = t.dtype;
      tensor.shape = t.shape;
      tensor.fragments.push_back(Fragment{file.ref(i, input), Shape(t.shape.size(), 0)});
      if (args.checkpoint_version < 2.0 && (name->ends_with("self_attention.linear_qkv.weight") ||
                                            name->ends_with("self_attention.linear_qkv.bias"))) {
        if (t.name.find("query_key_value") == std::string::npos)
          return invalid_input(where + ": '" + t.name + "': megatron-core names in a file of " +
                               "checkpoint_version " + std::to_string(args.checkpoint_version) +
                               " (megatron-core writes 3.0)");
        CKPT_ASSIGN_OR_RETURN(tensor, qkv_in_current_order(tensor, args, where));
      }
      std::vector<LogicalTensor> pieces;
      if (name->ends_with(".mlp.experts.weight1") || name->ends_with(".mlp.experts.weight2")) {
        CKPT_ASSIGN_OR_RETURN(pieces, grouped_mlp_experts(tensor, args, rank, where));
      } else {
        pieces.push_back(std::move(tensor));
      }
      for (auto& piece : pieces) {
        bool expert = piece.name.find(".mlp.experts.") != std::string::npos;
        std::int64_t split_rank = expert && args.etp == 1 ? 0 : rank.tp;
        auto& list = shards[piece.name];
        if (list.empty()) order.push_back(piece.name);
        const Shard* seen = nullptr;
        for (const auto& s : list)
          if (s.tp == split_rank) seen = &s;
        if (seen && seen->pp != rank.pp)
          return invalid_input(where + ": '" + piece.name + "' is in pipeline stages " +
                               std::to_string(seen->pp) + " and " + std::to_string(rank.pp) +
                               " (local layer numbers collide: the pipeline split of args does "
                               "not match the files)");
        if (seen) continue;
        list.push_back(Shard{split_rank, rank.pp, std::move(piece)});
      }
    }
    RankFileReader::release_freed_memory();  // peak memory stays that of a few rank files
  }
  for (const auto& name : order) {
    bool expert = name.find(".mlp.experts.") != std::string::npos;
    std::int64_t size = expert ? args.etp : args.tp;
    CKPT_ASSIGN_OR_RETURN(auto joined,
                          join_shards(name, std::move(shards[name]), size, args.gated_mlp,
                                      args.local_spec, layout.checkpoint_dir.string()));
    out.tensors.tensors.push_back(std::move(joined));
  }
  if (tied_output_copies)
    out.tensors.notes.push_back("skipped output_layer.weight of the last pipeline stage (" +
                                std::to_string(tied_output_copies) +
                                " file(s)): a copy of the tied embedding");
  if (mtp_embedding_copies)
    out.tensors.notes.push_back(
        "skipped embedding.word_embeddings.weight of the last pipeline "
        "stage (" +
        std::to_string(mtp_embedding_copies) +
        " file(s)): the copy multi-token prediction keeps of the first "
        "stage's");
  if (extra_state)
    out.tensors.notes.push_back("skipped " + std::to_string(extra_state) +
                                " Transformer Engine _extra_state entries (never read)");
  if (training)
    out.tensors.notes.push_back("skipped " + std::to_string(training) +
                                " optimizer / rng tensors outside the model (never read)");
  out.args = args;
  return out;
}

FoundCheckpoint found_megatron(const fs::path& dir, MegatronLayout layout) {
  FoundCheckpoint found;
  found.read = [dir,
                layout = std::move(layout)](const ReadOptions& options) -> Result<SourceModel> {
    MegatronLayout chosen = layout;
    if (options.iteration) {
      CKPT_ASSIGN_OR_RETURN(auto again, find_megatron_checkpoint(dir, options.iteration));
      if (!again)
        return invalid_input(dir.string() + ": no Megatron checkpoint for --iteration " +
                             std::to_string(*options.iteration));
      chosen = std::move(*again);
    }
    CKPT_ASSIGN_OR_RETURN(MegatronTensors tensors, read_megatron_tensors(chosen, options));
    std::optional<fs::path> hf_dir = options.hf_config ? options.hf_config : chosen.hf_dir;
    // The run's sizes: its args, else verl's transformer_config.json or Megatron-Bridge's
    // run_config.yaml.
    std::optional<MegatronArgs> run = tensors.args;
    std::string source = "the checkpoint's args";
    if (!run) {
      for (const fs::path& file : {chosen.checkpoint_dir.parent_path() / "transformer_config.json",
                                   chosen.checkpoint_dir / "run_config.yaml"}) {
        CKPT_ASSIGN_OR_RETURN(bool there, regular_file_exists(file));
        if (!there) continue;
        auto sizes = file.extension() == ".json" ? read_transformer_config_json(file)
                                                 : read_run_config_yaml(file);
        if (!sizes) return sizes.error();
        run = *sizes;
        source = file.string();
        break;
      }
    }
    if (run && hf_dir) {
      CKPT_ASSIGN_OR_RETURN(bool has_config, regular_file_exists(*hf_dir / "config.json"));
      if (has_config) {
        CKPT_ASSIGN_OR_RETURN(HfConfig config, read_hf_config(*hf_dir / "config.json"));
        CKPT_TRY(cross_check(*run, config, source));
        tensors.tensors.notes.push_back("config.json agrees with " + source +
                                        " (layers, hidden size, heads, groups, experts, vocab)");
      }
    }
    SourceModel model;
    model.layout = std::string(chosen.format == MegatronFormat::kTorchDist
                                   ? "Megatron-Core torch_dist checkpoint in "
                                   : "Megatron legacy checkpoint (mp_rank_*) in ") +
                   chosen.checkpoint_dir.string();
    model.notes = chosen.notes;
    model.naming = SourceModel::Naming::kMegatron;
    model.tensors = std::move(tensors.tensors);
    model.hf_dir = chosen.hf_dir;
    return model;
  };
  return found;
}

}  // namespace

std::optional<std::pair<std::int64_t, std::string_view>> megatron_key_number(
    std::string_view text) {
  std::int64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end == text.data() || value < 0) return std::nullopt;
  std::string_view rest(end, text.data() + text.size() - end);
  if (!rest.empty() && rest.front() != '.') return std::nullopt;
  if (!rest.empty()) rest.remove_prefix(1);
  return std::make_pair(value, rest);
}

MegatronTpSplit megatron_tp_split(std::string_view name, std::int64_t rows, bool gated_mlp,
                                  bool local_spec) {
  using Split = MegatronTpSplit;
  if (name.ends_with("output_layer.weight") && rows == 1) return Split::kReplicated;
  if (name.ends_with("linear_fc1.weight") || name.ends_with("linear_fc1.bias")) {
    // A vision model's projection (its patch merger) is a plain MLP whatever the model's is.
    bool gated = gated_mlp && name.find("projection.") == std::string_view::npos;
    return gated ? Split::kGatedRows : Split::kRows;
  }
  for (std::string_view row_split :
       {"linear_qkv.weight", "linear_qkv.bias", "word_embeddings.weight", "output_layer.weight",
        "linear_q_up_proj.weight", "linear_kv_up_proj.weight", "linear_q_proj.weight",
        "eh_proj.weight"})
    if (name.ends_with(row_split)) return Split::kRows;
  if (local_spec &&
      (name.ends_with("linear_q_down_proj.weight") || name.ends_with("linear_kv_down_proj.weight")))
    return Split::kRows;
  if (name.ends_with("linear_proj.weight") || name.ends_with("linear_fc2.weight"))
    return Split::kColumns;
  return Split::kReplicated;
}

Result<MegatronTensors> read_megatron_tensors(const MegatronLayout& layout,
                                              const ReadOptions& options) {
  return layout.format == MegatronFormat::kTorchDist ? read_torch_dist(layout, options)
                                                     : read_legacy(layout, options);
}

Result<FoundCheckpoint> find_megatron(const fs::path& dir, bool required) {
  CKPT_ASSIGN_OR_RETURN(auto layout, find_megatron_checkpoint(dir));
  if (!layout) {
    if (required)
      return invalid_input(dir.string() +
                           ": no Megatron checkpoint (no latest_checkpointed_iteration.txt, "
                           "metadata.json, mp_rank_* directories, dist_ckpt/ or weights/)");
    return FoundCheckpoint();
  }
  return found_megatron(dir, std::move(*layout));
}

}  // namespace ckptstream
