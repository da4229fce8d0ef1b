// The Megatron readers (formats/megatron_args.h, formats/megatron_checkpoint.h) on checkpoints
// real megatron-core wrote (tests/fixtures/megatron, tools/fixtures/make_megatron_fixtures.py):
// the run's arguments as the legacy files pickle them, the layer numbering of pipeline stages and
// virtual chunks, and the canonical tensors both formats become.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "formats/megatron_args.h"
#include "formats/megatron_checkpoint.h"
#include "pickle/value.h"
#include "torch/torch_checkpoint.h"

using namespace ckptstream;
namespace fs = std::filesystem;

namespace {

const fs::path kMegatron = fs::path(CKPT_FIXTURES) / "megatron";

MegatronArgs args_of(const std::string& fixture, const std::string& rank_dir) {
  auto file =
      fs::path(kMegatron) / fixture / "megatron/iter_0000010" / rank_dir / "model_optim_rng.pt";
  auto ckpt = read_torch_file(file);
  REQUIRE(ckpt.ok());
  auto args = ckpt->root->find("args");
  REQUIRE(args);
  auto parsed = read_megatron_args(*args, file.string());
  REQUIRE(parsed.ok());
  return *parsed;
}

std::vector<std::int64_t> offsets(const MegatronArgs& args) {
  std::vector<std::int64_t> out;
  for (std::int64_t pp = 0; pp < args.pp; ++pp)
    for (std::int64_t vp = 0; vp < std::max<std::int64_t>(args.vpp, 1); ++vp) {
      auto offset = megatron_layer_offset(args, pp, vp);
      REQUIRE(offset.ok());
      out.push_back(*offset);
    }
  return out;
}

MegatronTensors read_fixture(const std::string& fixture) {
  auto layout = find_megatron_checkpoint(kMegatron / fixture / "megatron");
  REQUIRE(layout.ok());
  REQUIRE(layout->has_value());
  ReadOptions options;
  options.threads = 1;
  auto tensors = read_megatron_tensors(**layout, options);
  REQUIRE(tensors.ok());
  return std::move(*tensors);
}

const LogicalTensor* find(const MegatronTensors& t, std::string_view name) {
  for (const auto& x : t.tensors.tensors)
    if (x.name == name) return &x;
  return nullptr;
}

}  // namespace

TEST_CASE("args: the parallel sizes and model sizes megatron-core pickled") {
  auto args = args_of("qwen3_pp2vpp2_legacy", "mp_rank_00_000");
  CHECK(args.tp == 1);
  CHECK(args.pp == 2);
  CHECK(args.vpp == 2);
  CHECK(args.ep == 1);
  CHECK(args.num_layers == 4);
  CHECK(args.num_attention_heads == 4);
  CHECK(args.num_query_groups == 2);
  CHECK(args.kv_channels == 12);
  CHECK(args.gated_mlp);
  CHECK(args.untied_output);
  // Real runs interleave chunks: rank 0 holds layers 0 and 2, rank 1 layers 1 and 3.
  CHECK(offsets(args) == std::vector<std::int64_t>{0, 2, 1, 3});

  auto uneven = args_of("llama_tp2pp2_uneven_legacy", "mp_rank_00_000");
  CHECK(uneven.tp == 2);
  CHECK(uneven.first_stage_layers == 1);
  CHECK(!uneven.untied_output);
  CHECK(offsets(uneven) == std::vector<std::int64_t>{0, 1});
}

TEST_CASE("layer offsets: megatron-core's get_transformer_layer_offset rules") {
  MegatronArgs even;
  even.num_layers = 8;
  even.pp = 2;
  even.vpp = 2;
  CHECK(offsets(even) == std::vector<std::int64_t>{0, 4, 2, 6});
  even.vpp = 0;
  CHECK(offsets(even) == std::vector<std::int64_t>{0, 4});

  MegatronArgs accounted;  // the embedding and the loss count as a layer each in the split
  accounted.num_layers = 6;
  accounted.pp = 4;
  accounted.account_for_embedding_in_pipeline_split = true;
  accounted.account_for_loss_in_pipeline_split = true;
  CHECK(offsets(accounted) == std::vector<std::int64_t>{0, 1, 3, 5});

  MegatronArgs last;  // only the last stage's size given: the others split the rest
  last.num_layers = 7;
  last.pp = 3;
  last.last_stage_layers = 1;
  CHECK(offsets(last) == std::vector<std::int64_t>{0, 3, 6});

  MegatronArgs bad;
  bad.num_layers = 7;
  bad.pp = 2;
  CHECK(!megatron_layer_offset(bad, 1, 0).ok());
  bad.pipeline_layout = "Et|tL";
  auto refused = megatron_layer_offset(bad, 1, 0);
  REQUIRE(!refused.ok());
  CHECK(refused.error().message.find("Et|tL") != std::string::npos);
}

// The local layer spec keeps its norms apart in the model (input_layernorm, pre_mlp_layernorm),
// which the legacy files show; its sharded state dict names them as Transformer Engine fuses them.
std::string te_norm_name(std::string name) {
  for (auto [local, te] :
       {std::pair<std::string_view, std::string_view>{
            ".input_layernorm.weight", ".self_attention.linear_qkv.layer_norm_weight"},
        {".pre_mlp_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight"}}) {
    auto at = name.find(local);
    if (at != std::string::npos) name.replace(at, local.size(), te);
  }
  return name;
}

TEST_CASE("both formats of one model give the same canonical tensors") {
  auto dist = read_fixture("qwen2_tp2_dist");
  auto legacy = read_fixture("qwen2_tp2_legacy");
  CHECK(legacy.args.has_value());
  std::vector<std::string> dist_names, legacy_names;
  for (const auto& t : dist.tensors.tensors) dist_names.push_back(t.name);
  for (auto& t : legacy.tensors.tensors) legacy_names.push_back(t.name = te_norm_name(t.name));
  std::sort(dist_names.begin(), dist_names.end());
  std::sort(legacy_names.begin(), legacy_names.end());
  CHECK(dist_names == legacy_names);
  for (const auto& name : dist_names) {
    CAPTURE(name);
    REQUIRE(find(legacy, name));
    CHECK(find(dist, name)->shape == find(legacy, name)->shape);
  }
  // Stacked [L, ...] keys became per-layer tensors; padded vocab rows are still there.
  auto* qkv = find(dist, "decoder.layers.1.self_attention.linear_qkv.weight");
  REQUIRE(qkv);
  CHECK(qkv->shape == Shape{64, 32});
  REQUIRE(find(legacy, "embedding.word_embeddings.weight"));
  CHECK(find(legacy, "embedding.word_embeddings.weight")->shape == Shape{128, 32});
  // The legacy gated fc1 is regrouped from per-rank [gate_r; up_r] halves: 4 fragments.
  REQUIRE(find(legacy, "decoder.layers.0.mlp.linear_fc1.weight"));
  CHECK(find(legacy, "decoder.layers.0.mlp.linear_fc1.weight")->fragments.size() == 4);
}
