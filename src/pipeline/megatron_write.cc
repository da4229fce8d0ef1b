#include "pipeline/megatron_write.h"

#include <map>

#include "dcp/dcp_writer.h"
#include "formats/hf_config.h"
#include "formats/hf_safetensors.h"
#include "formats/torch_sources.h"
#include "io/input_file.h"
#include "mapping/fp8_blocks.h"
#include "mapping/megatron_hf.h"
#include "pipeline/output_rules.h"
#include "torch/torch_writer.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

using Kind = TorchObject::Kind;

// Megatron-LM's _vocab_size_with_padding: a multiple of divisor x TP.
std::int64_t padded_vocab(std::int64_t vocab, std::int64_t divisor, std::int64_t tp) {
  std::int64_t multiple = std::max<std::int64_t>(divisor, 1) * tp;
  return (vocab + multiple - 1) / multiple * multiple;
}

TorchObject optional_int(std::int64_t value) {
  return value > 0 ? TorchObject::of(value) : TorchObject::none();
}

// The training arguments Megatron-LM would have for this model and layout: the fields its
// loader compares (check_checkpoint_args), the parallel sizes its reshard logic reads, and the
// model sizes readers take the layout from (formats/megatron_args.h reads them back).
TorchObject megatron_args(const HfTextConfig& text, const MegatronWriteOptions& options,
                          std::int64_t vocab_rows, std::optional<DType> float_dtype, bool tied) {
  const MegatronParallel& par = options.parallel;
  TorchObject args = TorchObject::container(Kind::kNamespace);
  std::int64_t heads = text.num_attention_heads.value_or(0);
  std::int64_t groups = text.num_key_value_heads.value_or(heads);
  std::int64_t hidden = text.hidden_size.value_or(0);
  std::int64_t experts = text.num_experts.value_or(0);
  args.set("tensor_model_parallel_size", TorchObject::of(par.tp));
  args.set("pipeline_model_parallel_size", TorchObject::of(par.pp));
  args.set("virtual_pipeline_model_parallel_size",
           par.vpp > 1 ? TorchObject::of(par.vpp) : TorchObject::none());
  args.set("decoder_first_pipeline_num_layers", optional_int(par.first_stage_layers));
  args.set("decoder_last_pipeline_num_layers", optional_int(par.last_stage_layers));
  args.set("account_for_embedding_in_pipeline_split", TorchObject::of(false));
  args.set("account_for_loss_in_pipeline_split", TorchObject::of(false));
  args.set("expert_model_parallel_size", TorchObject::of(par.ep));
  args.set("expert_tensor_parallel_size", TorchObject::of(par.etp));
  args.set("num_layers", TorchObject::of(text.num_hidden_layers.value_or(0)));
  args.set("hidden_size", TorchObject::of(hidden));
  args.set("ffn_hidden_size", TorchObject::of(text.intermediate_size.value_or(0)));
  args.set("num_attention_heads", TorchObject::of(heads));
  args.set("group_query_attention", TorchObject::of(groups != heads));
  args.set("num_query_groups", TorchObject::of(groups));
  args.set("kv_channels", TorchObject::of(text.head_dim.value_or(heads ? hidden / heads : 0)));
  args.set("num_experts", optional_int(experts));
  args.set("moe_ffn_hidden_size",
           optional_int(experts ? text.moe_intermediate_size.value_or(0) : 0));
  args.set("multi_latent_attention", TorchObject::of(text.kv_lora_rank.has_value()));
  args.set("q_lora_rank", optional_int(text.q_lora_rank.value_or(0)));
  args.set("kv_lora_rank", optional_int(text.kv_lora_rank.value_or(0)));
  args.set("mtp_num_layers", optional_int(text.num_nextn_predict_layers.value_or(0)));
  args.set("swiglu", TorchObject::of(true));
  args.set("normalization", TorchObject::of(std::string("RMSNorm")));
  args.set("position_embedding_type", TorchObject::of(std::string("rope")));
  args.set("untie_embeddings_and_output_weights", TorchObject::of(!tied));
  args.set("make_vocab_size_divisible_by", TorchObject::of(options.vocab_divisor));
  args.set("padded_vocab_size", TorchObject::of(vocab_rows));
  args.set("vocab_size", optional_int(text.vocab_size.value_or(0)));
  args.set("ckpt_format",
           TorchObject::of(
               std::string(options.format == MegatronFormat::kTorchDist ? "torch_dist" : "torch")));
  args.set("transformer_impl",
           TorchObject::of(
               std::string(options.spec == MegatronSpec::kLocal ? "local" : "transformer_engine")));
  DType params = float_dtype.value_or(DType::kBF16);
  args.set("params_dtype", TorchObject::global("torch " + std::string(torch_name(params))));
  args.set("bf16", TorchObject::of(params == DType::kBF16));
  args.set("fp16", TorchObject::of(params == DType::kF16));
  return args;
}

// torch.save([obj]): a ShardedObject's payload, as megatron-core's torch strategy saves it.
Result<std::string> sharded_object_bytes(TorchObject obj) {
  TorchWriteOptions options;
  TorchObject list = TorchObject::container(Kind::kList);
  list.items.push_back(std::move(obj));
  options.root = std::move(list);
  options.serialization_id = false;
  CKPT_ASSIGN_OR_RETURN(TorchZipLayout layout, plan_torch_zip({}, options));
  return torch_zip_bytes(layout);
}

TorchObject common_state(TorchObject args) {
  TorchObject common = TorchObject::container(Kind::kDict);
  common.set("args", std::move(args));
  common.set("checkpoint_version", TorchObject::of(3.0));
  common.set("iteration", TorchObject::of(std::int64_t{0}));
  return common;
}

Result<std::vector<OutputFile>> torch_dist_files(MegatronRankLayout& layout,
                                                 const TorchObject& args, const std::string& prefix,
                                                 std::vector<TextFile>& texts) {
  CKPT_ASSIGN_OR_RETURN(std::string none_object, sharded_object_bytes(TorchObject::none()));
  CKPT_ASSIGN_OR_RETURN(std::string common, sharded_object_bytes(common_state(args)));
  std::vector<dcp::FileToWrite> files;
  for (auto& rank_file : layout.files) {
    dcp::FileToWrite file;
    file.name = "__" + std::to_string(rank_file.rank) + "_0.distcp";
    if (rank_file.rank == 0) file.bytes.push_back({"common_state/shard_0_1", common});
    for (const auto& key : rank_file.extra_states[0]) file.bytes.push_back({key, none_object});
    for (auto& piece : rank_file.models[0])
      file.chunks.push_back({piece.key, piece.global_shape, piece.offsets, std::move(piece.data)});
    files.push_back(std::move(file));
  }
  if (files.empty() || layout.files.front().rank != 0)
    files.insert(files.begin(),
                 dcp::FileToWrite{"__0_0.distcp", {{"common_state/shard_0_1", common}}, {}});
  CKPT_ASSIGN_OR_RETURN(dcp::DcpOutput dcp, dcp::plan_dcp_output(std::move(files), prefix));
  texts.push_back({prefix + ".metadata", std::move(dcp.metadata)});
  texts.push_back({prefix + "metadata.json",
                   "{\"sharded_backend\": \"torch_dist\", \"sharded_backend_version\": 1}"});
  return std::move(dcp.files);
}

Result<std::vector<OutputFile>> legacy_files(MegatronRankLayout& layout, const TorchObject& args,
                                             const std::string& prefix) {
  std::vector<OutputFile> out;
  for (auto& rank_file : layout.files) {
    TorchObject root = TorchObject::container(Kind::kDict);
    root.set("args", args);
    root.set("checkpoint_version", TorchObject::of(3.0));
    root.set("iteration", TorchObject::of(std::int64_t{0}));
    std::vector<TorchWriteTensor> tensors;
    std::vector<LogicalTensor> data;
    const std::size_t chunks = rank_file.models.size();
    for (std::size_t v = 0; v < chunks; ++v) {
      TorchObject& model = root.set(chunks > 1 ? "model" + std::to_string(v) : "model",
                                    TorchObject::container(Kind::kOrderedDict));
      for (auto& piece : rank_file.models[v]) {
        model.set(piece.key, TorchObject::tensor_at(tensors.size()));
        tensors.push_back({{piece.key}, piece.data.dtype, piece.data.shape});
        // VPP chunks number their layers locally: the chunk keeps names unique in the file.
        piece.data.name = chunks > 1 ? "model" + std::to_string(v) + "/" + piece.key : piece.key;
        data.push_back(std::move(piece.data));
      }
      for (const auto& name : rank_file.extra_states[v]) model.set(name, TorchObject::none());
    }
    TorchWriteOptions options;
    options.root = std::move(root);
    options.prefix = "model_optim_rng";
    CKPT_ASSIGN_OR_RETURN(TorchZipLayout zip, plan_torch_zip(tensors, options));
    CKPT_ASSIGN_OR_RETURN(OutputFile file,
                          torch_zip_output_file(prefix + rank_file.dir + "/model_optim_rng.pt",
                                                std::move(zip), std::move(data)));
    out.push_back(std::move(file));
  }
  return out;
}

// The model's tensors: safetensors (model.safetensors or shards + index), else torch.save files
// (pytorch_model.bin or shards + index) through the torch reader.
Result<SourceTensors> read_hf_model(const fs::path& dir) {
  if (is_safetensors_model_dir(dir)) return read_hf_source_tensors(dir);
  auto set = find_torch_sources({dir});
  if (!set.ok())
    return invalid_input(dir.string() +
                         ": neither model.safetensors, a safetensors index nor torch .bin files (" +
                         set.error().message + ")");
  CKPT_ASSIGN_OR_RETURN(TorchConversion conversion, plan_torch_conversion(*set, std::nullopt));
  SourceTensors out;
  out.inputs = std::move(conversion.inputs);
  out.tensors = std::move(conversion.tensors);
  out.notes = set->notes;
  for (const auto& alias : conversion.dropped_aliases) out.notes.push_back("not read: " + alias);
  return out;
}

}  // namespace

Result<MergePlan> plan_hf_to_megatron(const fs::path& hf_dir, const MegatronWriteOptions& options) {
  fs::path config_json = hf_dir / "config.json";
  CKPT_ASSIGN_OR_RETURN(bool has_config, regular_file_exists(config_json));
  if (!has_config)
    return usage_error(hf_dir.string() +
                       ": no config.json (a Hugging Face model directory is needed: its "
                       "architecture decides the Megatron names)");
  CKPT_ASSIGN_OR_RETURN(HfConfig config, read_hf_config(config_json));
  const HfTextConfig& text = config.language();
  CKPT_ASSIGN_OR_RETURN(SourceTensors hf, read_hf_model(hf_dir));
  CKPT_ASSIGN_OR_RETURN(DTypeChoice choice, parse_dtype_choice(options.dtype));
  CKPT_ASSIGN_OR_RETURN(auto float_dtype, resolve_float_dtype(choice, config));
  // A Megatron checkpoint holds no FP8 scales: block-quantized weights are dequantized, to
  // bfloat16 unless another dtype is asked for.
  CKPT_ASSIGN_OR_RETURN(std::size_t quantized, count_block_fp8(hf));
  std::vector<std::string> fp8_notes;
  if (quantized) {
    CKPT_TRY(dequantize_block_fp8(hf, config));
    fp8_notes = hf.notes;
    if (!float_dtype) float_dtype = DType::kBF16;
  }
  set_output_dtypes(hf.tensors, float_dtype);

  const MegatronParallel& par = options.parallel;
  MegatronModelFacts facts;
  facts.num_layers = text.num_hidden_layers.value_or(0);
  facts.num_experts = text.num_experts.value_or(0);
  facts.tied_embeddings = config.tie_word_embeddings.value_or(false);
  std::int64_t heads = text.num_attention_heads.value_or(0);
  if (facts.num_layers <= 0 || heads <= 0 || !text.hidden_size || !text.vocab_size)
    return invalid_input(config_json.string() +
                         ": needs num_hidden_layers, num_attention_heads, hidden_size and "
                         "vocab_size");
  bool mla = text.kv_lora_rank.has_value();
  CKPT_TRY(check_megatron_parallel(
      par, heads, mla ? heads : text.num_key_value_heads.value_or(heads),
      text.intermediate_size.value_or(0), text.moe_intermediate_size.value_or(0), facts));
  std::int64_t vocab_rows = padded_vocab(*text.vocab_size, options.vocab_divisor, par.tp);
  CKPT_ASSIGN_OR_RETURN(SourceTensors canonical,
                        map_hf_to_megatron(std::move(hf), config, vocab_rows));
  CKPT_ASSIGN_OR_RETURN(MegatronRankLayout layout, layout_megatron(canonical.tensors, facts, par,
                                                                   options.spec, options.format));

  MergePlan merge;
  merge.layout =
      "Hugging Face model (" + config.model_type() + ") -> Megatron-Core " + layout.description;
  merge.config_json = config_json;
  merge.notes = std::move(fp8_notes);
  merge.notes.insert(merge.notes.end(), canonical.notes.begin(), canonical.notes.end());
  std::string prefix = options.flat ? "" : "release/";
  TorchObject args = megatron_args(text, options, vocab_rows, float_dtype, facts.tied_embeddings);
  Plan& plan = merge.model;
  plan.inputs = std::move(canonical.inputs);
  if (options.format == MegatronFormat::kTorchDist) {
    CKPT_ASSIGN_OR_RETURN(plan.files, torch_dist_files(layout, args, prefix, plan.text_files));
  } else {
    CKPT_ASSIGN_OR_RETURN(plan.files, legacy_files(layout, args, prefix));
  }
  if (!options.flat) plan.text_files.push_back({"latest_checkpointed_iteration.txt", "release"});
  for (const auto& file : plan.files)
    for (const auto& placed : file.tensors) plan.total_size += nbytes(placed.tensor);
  merge.notes.push_back(std::to_string(plan.files.size()) + " rank file(s) for a world of " +
                        std::to_string(layout.world_size) + " ranks");
  return merge;
}

}  // namespace ckptstream
