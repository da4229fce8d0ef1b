// The Megatron -> Hugging Face family tables (mapping/megatron_hf.h) on hand-made canonical
// tensors: which source rows each Hugging Face tensor takes (QKV per query group, [gate; up]
// halves, padded vocab rows), the names per family, and the completeness checks. Real checkpoints
// of every family, merged byte-exactly, are in tests/cli/test_megatron.sh.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "formats/hf_config.h"
#include "mapping/megatron_hf.h"
#include "plan_builders.h"
#include "temp_dir.h"

using namespace ckptstream;
using ckptstream::testing::TempDir;
using ckptstream::testing::write_file;

namespace {

// A [rows, cols] float32 tensor whose element (r, c) is storage element r * cols + c: a view's
// storage offset then says which source row it starts at.
LogicalTensor rows_tensor(const std::string& name, std::int64_t rows, std::int64_t cols = 2) {
  TensorRef ref;
  ref.dtype = DType::kF32;
  ref.shape = cols ? Shape{rows, cols} : Shape{rows};
  ref.strides = contiguous_strides(ref.shape);
  ref.storage_nbytes = static_cast<std::uint64_t>(rows * (cols ? cols : 1) * 4);
  return ckptstream::testing::tensor(name, ref.shape, {Fragment{ref, Shape(ref.shape.size(), 0)}});
}

// The source rows (in order) a mapped 2-d tensor of `cols` columns reads.
std::vector<std::int64_t> source_rows(const LogicalTensor& t, std::int64_t cols = 2) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(t.shape[0]), -1);
  for (const auto& f : t.fragments) {
    std::int64_t first = f.source.offset / cols;
    for (std::int64_t r = 0; r < f.source.shape[0]; ++r)
      rows[static_cast<std::size_t>(f.offsets[0] + r)] = first + r * f.source.strides[0] / cols;
  }
  return rows;
}

HfConfig config_of(TempDir& dir, const std::string& json) {
  write_file(dir.path / "config.json", json);
  auto config = read_hf_config(dir.path / "config.json");
  REQUIRE(config.ok());
  return *config;
}

// A dense two-layer model's canonical tensors (hidden 2, so every matrix has 2 columns).
SourceTensors dense_model(std::int64_t heads, std::int64_t groups, std::int64_t head_dim,
                          std::int64_t padded_vocab, std::int64_t ffn, bool te_norms) {
  SourceTensors s;
  s.tensors.push_back(rows_tensor("embedding.word_embeddings.weight", padded_vocab));
  for (int i = 0; i < 2; ++i) {
    std::string p = "decoder.layers." + std::to_string(i) + ".";
    s.tensors.push_back(rows_tensor(
        p + (te_norms ? "self_attention.linear_qkv.layer_norm_weight" : "input_layernorm.weight"),
        2, 0));
    s.tensors.push_back(rows_tensor(p + "self_attention.linear_qkv.weight",
                                    groups * (heads / groups + 2) * head_dim));
    s.tensors.push_back(rows_tensor(p + "self_attention.linear_proj.weight", 2));
    s.tensors.push_back(rows_tensor(
        p + (te_norms ? "mlp.linear_fc1.layer_norm_weight" : "pre_mlp_layernorm.weight"), 2, 0));
    s.tensors.push_back(rows_tensor(p + "mlp.linear_fc1.weight", 2 * ffn));
    s.tensors.push_back(rows_tensor(p + "mlp.linear_fc2.weight", 2));
  }
  s.tensors.push_back(rows_tensor("decoder.final_layernorm.weight", 2, 0));
  s.tensors.push_back(rows_tensor("output_layer.weight", padded_vocab));
  return s;
}

std::map<std::string, LogicalTensor> by_name(SourceTensors mapped) {
  std::map<std::string, LogicalTensor> out;
  for (auto& t : mapped.tensors) out.emplace(t.name, std::move(t));
  return out;
}

constexpr const char* kLlama =
    R"({"model_type": "llama", "hidden_size": 2, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 1, "vocab_size": 5})";

}  // namespace

TEST_CASE("QKV per query group, [gate; up] halves and padded vocab rows") {
  TempDir dir("megatron_map");
  auto config = config_of(dir, kLlama);
  auto mapped = map_megatron_to_hf(dense_model(4, 2, 1, 8, 3, true), config, {});
  REQUIRE(mapped.ok());
  auto t = by_name(*mapped);
  // Two groups of [q, q, k, v] (head_dim 1): rows 0 1 | 2 | 3 and 4 5 | 6 | 7.
  CHECK(source_rows(t.at("model.layers.1.self_attn.q_proj.weight")) ==
        std::vector<std::int64_t>{0, 1, 4, 5});
  CHECK(source_rows(t.at("model.layers.1.self_attn.k_proj.weight")) ==
        std::vector<std::int64_t>{2, 6});
  CHECK(source_rows(t.at("model.layers.1.self_attn.v_proj.weight")) ==
        std::vector<std::int64_t>{3, 7});
  CHECK(source_rows(t.at("model.layers.0.mlp.gate_proj.weight")) ==
        std::vector<std::int64_t>{0, 1, 2});
  CHECK(source_rows(t.at("model.layers.0.mlp.up_proj.weight")) ==
        std::vector<std::int64_t>{3, 4, 5});
  CHECK(t.at("model.embed_tokens.weight").shape == Shape{5, 2});  // 3 padding rows dropped
  CHECK(t.at("lm_head.weight").shape == Shape{5, 2});
  CHECK(t.count("model.layers.0.input_layernorm.weight"));  // TE's fused norm
  CHECK(t.count("model.layers.0.post_attention_layernorm.weight"));
  CHECK(t.count("model.norm.weight"));
  CHECK(t.size() == 3 + 2 * 9);

  // The local spec's separate norms map to the same names.
  auto local = map_megatron_to_hf(dense_model(4, 2, 1, 8, 3, false), config, {});
  REQUIRE(local.ok());
  CHECK(by_name(*local).count("model.layers.1.post_attention_layernorm.weight"));
}

TEST_CASE("a one-row output layer is a value head: score.weight with --is-value-model") {
  TempDir dir("megatron_map");
  auto config = config_of(dir, kLlama);
  auto model = dense_model(4, 2, 1, 8, 3, true);
  model.tensors.back() = rows_tensor("output_layer.weight", 1);
  auto refused = map_megatron_to_hf(model, config, {});
  REQUIRE(!refused.ok());
  CHECK(refused.error().message.find("--is-value-model") != std::string::npos);
  MegatronMapOptions value;
  value.value_model = true;
  auto mapped = map_megatron_to_hf(model, config, value);
  REQUIRE(mapped.ok());
  auto t = by_name(*mapped);
  CHECK(t.at("score.weight").shape == Shape{1, 2});
  CHECK(!t.count("lm_head.weight"));
}

TEST_CASE("completeness: unknown tensors, missing layers and shapes config.json rules out") {
  TempDir dir("megatron_map");
  auto config = config_of(dir, kLlama);
  auto extra = dense_model(4, 2, 1, 8, 3, true);
  extra.tensors.push_back(rows_tensor("decoder.layers.0.mlp.mystery.weight", 2));
  auto unmapped = map_megatron_to_hf(extra, config, {});
  REQUIRE(!unmapped.ok());
  CHECK(unmapped.error().message.find("decoder.layers.0.mlp.mystery.weight") != std::string::npos);

  auto short_model = dense_model(4, 2, 1, 8, 3, true);
  std::erase_if(short_model.tensors,
                [](const LogicalTensor& t) { return t.name.rfind("decoder.layers.1.", 0) == 0; });
  auto missing = map_megatron_to_hf(short_model, config, {});
  REQUIRE(!missing.ok());
  CHECK(missing.error().message.find("model.layers.1.input_layernorm.weight") != std::string::npos);

  auto wrong_heads = map_megatron_to_hf(dense_model(4, 4, 1, 8, 3, true), config, {});
  REQUIRE(!wrong_heads.ok());
  CHECK(wrong_heads.error().message.find("need 8 rows") != std::string::npos);

  auto gpt2 = config_of(dir, R"({"model_type": "gpt2", "vocab_size": 5})");
  auto unknown = map_megatron_to_hf(dense_model(4, 2, 1, 8, 3, true), gpt2, {});
  REQUIRE(!unknown.ok());
  CHECK(unknown.error().message.find("model_type 'gpt2' has no Megatron name table") !=
        std::string::npos);
}

TEST_CASE("experts, routers and shared experts named per family") {
  TempDir dir("megatron_map");
  auto expert_model = [] {
    auto s = dense_model(4, 2, 1, 8, 3, true);
    std::erase_if(s.tensors, [](const LogicalTensor& t) {
      return t.name.find("mlp.linear_fc") != std::string::npos &&
             t.name.find("layer_norm") == std::string::npos;
    });
    for (int i = 0; i < 2; ++i) {
      std::string p = "decoder.layers." + std::to_string(i) + ".mlp.";
      s.tensors.push_back(rows_tensor(p + "router.weight", 2));
      for (int e = 0; e < 2; ++e) {
        s.tensors.push_back(
            rows_tensor(p + "experts." + std::to_string(e) + ".linear_fc1.weight", 4));
        s.tensors.push_back(
            rows_tensor(p + "experts." + std::to_string(e) + ".linear_fc2.weight", 2));
      }
    }
    return s;
  };
  auto mixtral = config_of(dir, R"({"model_type": "mixtral", "hidden_size": 2,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 1,
      "vocab_size": 5, "num_local_experts": 2})");
  auto m = map_megatron_to_hf(expert_model(), mixtral, {});
  REQUIRE(m.ok());
  auto t = by_name(*m);
  CHECK(t.count("model.layers.1.block_sparse_moe.gate.weight"));
  CHECK(source_rows(t.at("model.layers.1.block_sparse_moe.experts.1.w1.weight")) ==
        std::vector<std::int64_t>{0, 1});
  CHECK(source_rows(t.at("model.layers.1.block_sparse_moe.experts.1.w3.weight")) ==
        std::vector<std::int64_t>{2, 3});
  CHECK(t.count("model.layers.0.block_sparse_moe.experts.0.w2.weight"));

  auto qwen3_moe = config_of(dir, R"({"model_type": "qwen3_moe", "hidden_size": 2,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 1,
      "vocab_size": 5, "num_experts": 3})");
  auto q = map_megatron_to_hf(expert_model(), qwen3_moe, {});
  REQUIRE(!q.ok());  // config.json says 3 experts, the checkpoint has 2
  CHECK(q.error().message.find("model.layers.0.mlp.experts.2.gate_proj.weight") !=
        std::string::npos);
}

TEST_CASE("Hugging Face -> megatron-core is the table run backwards: rows come back in place") {
  TempDir dir("megatron_map");
  auto config = config_of(dir, kLlama);
  auto hf = map_megatron_to_hf(dense_model(4, 2, 1, 8, 3, false), config, {});
  REQUIRE(hf.ok());
  auto back = map_hf_to_megatron(*hf, config, 8);
  REQUIRE(back.ok());
  auto t = by_name(*back);
  // QKV re-interleaved per query group and [gate; up] rejoined: the original rows, in order.
  CHECK(source_rows(t.at("decoder.layers.1.self_attention.linear_qkv.weight")) ==
        std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(source_rows(t.at("decoder.layers.0.mlp.linear_fc1.weight")) ==
        std::vector<std::int64_t>{0, 1, 2, 3, 4, 5});
  // The vocabulary padded again: 5 rows read, 3 zero rows read from nowhere.
  const LogicalTensor& embed = t.at("embedding.word_embeddings.weight");
  CHECK(embed.shape == Shape{8, 2});
  std::int64_t zero_rows = 0;
  for (const auto& f : embed.fragments)
    if (f.source.zeros) zero_rows += f.source.shape[0];
  CHECK(zero_rows == 3);
  // Norms under the local spec's module names (the writer renames them per spec).
  CHECK(t.count("decoder.layers.0.input_layernorm.weight"));
  CHECK(t.count("decoder.layers.0.pre_mlp_layernorm.weight"));
  CHECK(t.size() == hf->tensors.size() - 2 * 3);  // per layer q, k, v -> qkv; gate, up -> fc1

  // Completeness: a tensor no rule maps, one config.json needs that is missing.
  auto extra = *hf;
  extra.tensors.push_back(rows_tensor("model.layers.0.mystery.weight", 2));
  auto unmapped = map_hf_to_megatron(extra, config, 8);
  REQUIRE_FALSE(unmapped.ok());
  CHECK(unmapped.error().message.find("model.layers.0.mystery.weight") != std::string::npos);
  auto lacking = *hf;
  std::erase_if(lacking.tensors, [](const LogicalTensor& x) {
    return x.name == "model.layers.1.self_attn.o_proj.weight";
  });
  auto missing = map_hf_to_megatron(lacking, config, 8);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("model.layers.1.self_attn.o_proj.weight") !=
        std::string::npos);
  // A k_proj of the wrong size for config.json's groups.
  auto wrong = *hf;
  for (auto& x : wrong.tensors)
    if (x.name == "model.layers.0.self_attn.k_proj.weight") x = rows_tensor(x.name, 3);
  auto shape = map_hf_to_megatron(wrong, config, 8);
  REQUIRE_FALSE(shape.ok());
  CHECK(shape.error().message.find("need 2 rows") != std::string::npos);
}
