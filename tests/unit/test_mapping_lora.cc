// PEFT LoRA keys in merged state dicts: recognition, renaming, hyper-parameter discovery, errors,
// the adapter export, and fusion end to end (safetensors plan + executor) against torch
// (tests/fixtures/lora, made by tools/fixtures/make_lora_fixtures.py).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "exec/executor.h"
#include "formats/hf_config.h"
#include "io/input_file.h"
#include "mapping/lora.h"
#include "safetensors/safetensors.h"
#include "temp_dir.h"

using namespace ckptstream;
namespace fs = std::filesystem;
using ckptstream::testing::TempDir;
using ckptstream::testing::write_file;

namespace {

const fs::path kLoraFixtures = fs::path(CKPT_FIXTURES) / "lora";

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A tensor with a name and a shape only: naming and checks never look at the bytes.
LogicalTensor named(const std::string& name, Shape shape) {
  LogicalTensor t;
  t.name = name;
  t.shape = std::move(shape);
  return t;
}

std::vector<std::string> names(const std::vector<LogicalTensor>& tensors) {
  std::vector<std::string> out;
  for (const auto& t : tensors) out.push_back(t.name);
  return out;
}

// A PEFT-wrapped toy state dict: q_proj (bias, adapter name kept), v_proj (adapter name
// dropped, no prefix), plain tensors around them. r = 4.
std::vector<LogicalTensor> peft_state_dict() {
  return {
      named("base_model.model.model.embed_tokens.weight", {32, 16}),
      named("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", {16, 16}),
      named("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias", {16}),
      named("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", {4, 16}),
      named("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight", {16, 4}),
      named("model.layers.0.self_attn.v_proj.lora_B.weight", {8, 4}),
      named("model.layers.0.self_attn.v_proj.base_layer.weight", {8, 16}),
      named("model.layers.0.self_attn.v_proj.lora_A.weight", {4, 16}),
      named("base_model.model.lm_head.weight", {32, 16}),
  };
}

LoraParams params(double alpha, std::optional<std::int64_t> rank, bool rslora = false) {
  LoraParams p;
  p.alpha = alpha;
  p.rank = rank;
  p.use_rslora = rslora;
  p.alpha_source = p.rank_source = "the test";
  return p;
}

void expect_error(const Result<std::vector<LogicalTensor>>& result, ErrorKind kind,
                  const std::string& part) {
  REQUIRE(!result.ok());
  INFO(result.error().message);
  CHECK(result.error().kind == kind);
  CHECK(result.error().message.find(part) != std::string::npos);
}

// Every tensor of a safetensors file as a logical tensor with one contiguous fragment.
std::vector<LogicalTensor> tensors_of(const fs::path& path, std::size_t input) {
  auto file = InputFile::open(path);
  REQUIRE(file.ok());
  auto header = safetensors::read_header(*file);
  REQUIRE_MESSAGE(header.ok(), header.error().message);
  std::vector<LogicalTensor> out;
  for (const auto& entry : header->tensors) {
    LogicalTensor t = named(entry.name, entry.shape);
    t.source_dtype = t.dtype = entry.dtype;
    TensorRef ref;
    ref.input = input;
    ref.storage_begin = header->data_start + entry.data_begin;
    ref.storage_nbytes = entry.data_end - entry.data_begin;
    ref.dtype = entry.dtype;
    ref.shape = entry.shape;
    ref.strides.assign(entry.shape.size(), 1);
    for (std::size_t d = entry.shape.size(); d-- > 1;)
      ref.strides[d - 1] = ref.strides[d] * entry.shape[d];
    t.fragments.push_back({ref, Shape(entry.shape.size(), 0)});
    out.push_back(std::move(t));
  }
  return out;
}

// name -> float32 values of a safetensors file.
std::map<std::string, std::vector<float>> values_of(const fs::path& path) {
  auto file = InputFile::open(path);
  REQUIRE(file.ok());
  auto header = safetensors::read_header(*file);
  REQUIRE(header.ok());
  std::string bytes = read_text(path);
  std::map<std::string, std::vector<float>> out;
  for (const auto& entry : header->tensors) {
    REQUIRE(entry.dtype == DType::kF32);
    std::vector<float> values((entry.data_end - entry.data_begin) / 4);
    std::memcpy(values.data(), bytes.data() + header->data_start + entry.data_begin,
                values.size() * 4);
    out[entry.name] = std::move(values);
  }
  return out;
}

}  // namespace

TEST_CASE("fuse_lora: PEFT keys are recognised, renamed and fused in place, order kept") {
  auto fused = fuse_lora(peft_state_dict(), params(8, 4));
  REQUIRE_MESSAGE(fused.ok(), fused.error().message);
  CHECK(names(*fused) == std::vector<std::string>{
                             "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                             "model.layers.0.self_attn.q_proj.bias",
                             "model.layers.0.self_attn.v_proj.weight", "lm_head.weight"});
  const auto& q = (*fused)[1];
  REQUIRE(q.lora);
  CHECK(q.lora->scale == 2.0);
  CHECK(q.lora->a.name == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight");
  CHECK(q.lora->b.shape == Shape{16, 4});
  REQUIRE((*fused)[3].lora);
  CHECK((*fused)[3].lora->a.name == "model.layers.0.self_attn.v_proj.lora_A.weight");
  CHECK((*fused)[3].lora->b.name == "model.layers.0.self_attn.v_proj.lora_B.weight");
  CHECK(!(*fused)[0].lora);
  CHECK(!(*fused)[2].lora);  // the bias is renamed, never fused
  CHECK(has_lora_keys(peft_state_dict()));
  CHECK(!has_lora_keys(*fused));

  // rsLoRA: alpha / sqrt(r); r unknown beforehand is taken from the shapes.
  auto rs = fuse_lora(peft_state_dict(), params(8, std::nullopt, true));
  REQUIRE(rs.ok());
  CHECK((*rs)[1].lora->scale == 4.0);

  // A state dict without LoRA passes through, only base_layer removed.
  auto plain = fuse_lora({named("model.norm.weight", {4}), named("x.base_layer.weight", {2, 2})},
                         params(8, 4));
  REQUIRE(plain.ok());
  CHECK(names(*plain) == std::vector<std::string>{"model.norm.weight", "x.weight"});
}

TEST_CASE("fuse_lora refuses what it cannot fuse correctly") {
  auto with = [](std::vector<LogicalTensor> extra) {
    auto tensors = peft_state_dict();
    tensors.insert(tensors.end(), extra.begin(), extra.end());
    return tensors;
  };
  expect_error(fuse_lora(peft_state_dict(), params(8, 8)), ErrorKind::kInvalidInput, "says r = 8");
  expect_error(
      fuse_lora(with({named("model.layers.0.mlp.up_proj.lora_A.weight", {4, 16})}), params(8, 4)),
      ErrorKind::kInvalidInput, "has lora_A but no lora_B");
  expect_error(fuse_lora(with({named("model.layers.0.mlp.up_proj.lora_B.default.weight", {4, 4})}),
                         params(8, 4)),
               ErrorKind::kInvalidInput, "has lora_B but no lora_A");
  expect_error(fuse_lora(with({named("model.layers.0.mlp.up_proj.lora_A.weight", {4, 16}),
                               named("model.layers.0.mlp.up_proj.lora_B.weight", {24, 4})}),
                         params(8, 4)),
               ErrorKind::kInvalidInput, "no base weight");
  expect_error(fuse_lora(with({named("model.layers.0.mlp.up_proj.base_layer.weight", {24, 16}),
                               named("model.layers.0.mlp.up_proj.lora_A.weight", {4, 16}),
                               named("model.layers.0.mlp.up_proj.lora_B.weight", {24, 5})}),
                         params(8, std::nullopt)),
               ErrorKind::kInvalidInput, "do not fit");
  expect_error(fuse_lora(with({named("model.layers.0.mlp.up_proj.base_layer.weight", {24, 16}),
                               named("model.layers.0.mlp.up_proj.lora_A.weight", {8, 16}),
                               named("model.layers.0.mlp.up_proj.lora_B.weight", {24, 8})}),
                         params(8, std::nullopt)),
               ErrorKind::kUnsupported, "rank_pattern");
  expect_error(
      fuse_lora(
          with({named("base_model.model.model.embed_tokens.lora_embedding_A.default", {4, 32})}),
          params(8, 4)),
      ErrorKind::kUnsupported, "embeddings");
  expect_error(
      fuse_lora(with({named("model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight",
                            {16})}),
                params(8, 4)),
      ErrorKind::kUnsupported, "DoRA");
  expect_error(fuse_lora(with({named("model.layers.0.self_attn.q_proj.lora_B.default.bias", {16})}),
                         params(8, 4)),
               ErrorKind::kUnsupported, "biases");
  expect_error(
      fuse_lora(with({named("model.layers.0.self_attn.k_proj.lora_A.other.weight", {4, 16})}),
                params(8, 4)),
      ErrorKind::kUnsupported, "default");
  expect_error(
      fuse_lora(with({named("base_model.model.score.modules_to_save.default.weight", {1, 16})}),
                params(8, 4)),
      ErrorKind::kUnsupported, "modules_to_save");
  expect_error(
      fuse_lora(with({named("model.layers.0.self_attn.q_proj.weight", {16, 16})}), params(8, 4)),
      ErrorKind::kInvalidInput, "both become");
  expect_error(fuse_lora(with({named("model.layers.0.self_attn.q_proj.lora_A.weight", {4, 16})}),
                         params(8, 4)),
               ErrorKind::kInvalidInput, "same LoRA factor");
}

TEST_CASE("find_lora_params: flags, then lora_train_meta.json, then adapter_config.json") {
  TempDir dir("lora");
  auto found = [&](LoraFlags flags) { return find_lora_params(dir.path, flags); };

  // Nothing anywhere: a usage error that explains the flags, whatever the rank says.
  auto none = found({std::nullopt, 8, std::nullopt});
  REQUIRE(!none.ok());
  CHECK(none.error().kind == ErrorKind::kUsage);
  CHECK(none.error().message.find("--lora-alpha") != std::string::npos);
  CHECK(none.error().message.find("lora_train_meta.json") != std::string::npos);

  // Flags alone.
  auto flags = found({32.0, 16, true});
  REQUIRE(flags.ok());
  CHECK(flags->alpha == 32.0);
  CHECK(*flags->rank == 16);
  CHECK(flags->use_rslora);
  CHECK(flags->scale(16) == 8.0);
  CHECK(flags->alpha_source == "--lora-alpha");

  write_file(dir / "lora_adapter/adapter_config.json",
             R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": true,
                 "task_type": "CAUSAL_LM", "rank_pattern": {}, "alpha_pattern": {},
                 "target_modules": ["q_proj", "v_proj"], "use_dora": false})");
  auto config = found({});
  REQUIRE_MESSAGE(config.ok(), config.error().message);
  CHECK(config->alpha == 16);
  CHECK(*config->rank == 8);
  CHECK(config->use_rslora);
  CHECK(config->task_type == "CAUSAL_LM");
  CHECK(config->alpha_source.find("adapter_config.json") != std::string::npos);

  // The meta file comes first; what it lacks (use_rslora) comes from the adapter config.
  write_file(dir / "lora_train_meta.json",
             R"({"r": 4, "lora_alpha": 8.0, "task_type": "SEQ_CLS"})");
  auto meta = found({});
  REQUIRE(meta.ok());
  CHECK(meta->alpha == 8);
  CHECK(*meta->rank == 4);
  CHECK(meta->use_rslora);
  CHECK(meta->task_type == "SEQ_CLS");
  CHECK(meta->rank_source.find("lora_train_meta.json") != std::string::npos);

  // Flags win field by field.
  auto mixed = found({12.0, std::nullopt, false});
  REQUIRE(mixed.ok());
  CHECK(mixed->alpha == 12);
  CHECK(*mixed->rank == 4);
  CHECK(!mixed->use_rslora);

  // alpha 0 (verl's merger writes it on purpose) and malformed values are errors.
  write_file(dir / "lora_train_meta.json", R"({"r": 4, "lora_alpha": 0})");
  auto zero = found({});
  REQUIRE(!zero.ok());
  CHECK(zero.error().message.find("lora_train_meta.json") != std::string::npos);
  CHECK(zero.error().message.find("--lora-alpha") != std::string::npos);
  // ... unless the flag gives alpha: the file is still read for r.
  auto flagged = found({8.0, std::nullopt, std::nullopt});
  REQUIRE(flagged.ok());
  CHECK(*flagged->rank == 4);
  write_file(dir / "lora_train_meta.json", R"({"r": "four", "lora_alpha": 8})");
  CHECK(!found({}).ok());
  write_file(dir / "lora_train_meta.json", "not json");
  CHECK(!found({}).ok());
  CHECK(found({8.0, 4, false}).ok());  // complete flags never read the files
  CHECK(found({-1.0, 4, false}).error().kind == ErrorKind::kUsage);
  fs::remove(dir / "lora_train_meta.json");

  // Variants that cannot be fused.
  for (const char* bad : {R"({"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 4}})",
                          R"({"r": 8, "lora_alpha": 16, "alpha_pattern": {"q_proj": 4}})",
                          R"({"r": 8, "lora_alpha": 16, "use_dora": true})",
                          R"({"r": 8, "lora_alpha": 16, "fan_in_fan_out": true})",
                          R"({"peft_type": "IA3", "r": 8, "lora_alpha": 16})"}) {
    CAPTURE(bad);
    write_file(dir / "lora_adapter/adapter_config.json", bad);
    auto result = found({});
    REQUIRE(!result.ok());
    CHECK(result.error().kind == ErrorKind::kUnsupported);
    CHECK(result.error().message.find("adapter_config.json") != std::string::npos);
  }
}

TEST_CASE("export_lora_adapter: base model plus PEFT's adapter names and config") {
  auto params_8_4 = params(8, 4);
  params_8_4.task_type = "CAUSAL_LM";
  auto exported = export_lora_adapter(peft_state_dict(), params_8_4, "Qwen/Qwen2.5-0.5B");
  REQUIRE_MESSAGE(exported.ok(), exported.error().message);
  CHECK(names(exported->base) == std::vector<std::string>{"model.embed_tokens.weight",
                                                          "model.layers.0.self_attn.q_proj.weight",
                                                          "model.layers.0.self_attn.q_proj.bias",
                                                          "model.layers.0.self_attn.v_proj.weight",
                                                          "lm_head.weight"});
  for (const auto& t : exported->base) CHECK(!t.lora);
  CHECK(names(exported->adapter) ==
        std::vector<std::string>{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                                 "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                                 "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
                                 "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"});
  // json.dumps(LoraConfig(...).to_dict() restricted to these fields, indent=2, sort_keys=True)
  CHECK(exported->adapter_config_json == R"({
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "Qwen/Qwen2.5-0.5B",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layers_pattern": null,
  "layers_to_transform": null,
  "lora_alpha": 8,
  "lora_dropout": 0.0,
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 4,
  "rank_pattern": {},
  "revision": null,
  "target_modules": [
    "q_proj",
    "v_proj"
  ],
  "task_type": "CAUSAL_LM",
  "use_rslora": false
})");
  auto odd = params(2.5, std::nullopt, true);
  auto other = export_lora_adapter(peft_state_dict(), odd, std::nullopt);
  REQUIRE(other.ok());
  CHECK(other->adapter_config_json.find("\"lora_alpha\": 2.5,") != std::string::npos);
  CHECK(other->adapter_config_json.find("\"base_model_name_or_path\": null,") != std::string::npos);
  CHECK(other->adapter_config_json.find("\"task_type\": null,") != std::string::npos);
  CHECK(other->adapter_config_json.find("\"use_rslora\": true") != std::string::npos);
  CHECK(!export_lora_adapter({named("model.norm.weight", {4})}, odd, std::nullopt).ok());

  TempDir dir("lora");
  write_file(dir / "config.json", R"({"_name_or_path": "org/base", "model_type": "qwen2"})");
  auto named_config = read_hf_config(dir / "config.json");  // the one config.json reader
  REQUIRE(named_config.ok());
  CHECK(named_config->name_or_path == "org/base");
  write_file(dir / "config.json", R"({"model_type": "qwen2"})");
  CHECK(read_hf_config(dir / "config.json")->name_or_path.empty());
}

TEST_CASE("fused PEFT checkpoint through the planner and executor matches torch") {
  TempDir dir("lora");
  write_file(dir / "ckpt/lora_train_meta.json",
             R"({"r": 4, "lora_alpha": 8, "task_type": "CAUSAL_LM"})");
  auto found = find_lora_params(dir / "ckpt", {});
  REQUIRE_MESSAGE(found.ok(), found.error().message);
  auto tensors = tensors_of(kLoraFixtures / "peft_model.safetensors", 0);
  auto fused = fuse_lora(tensors, *found);
  REQUIRE_MESSAGE(fused.ok(), fused.error().message);
  CHECK(std::count_if(fused->begin(), fused->end(), [](const auto& t) { return t.lora; }) == 3);

  Plan plan;
  plan.inputs = {kLoraFixtures / "peft_model.safetensors"};
  REQUIRE(safetensors::plan_output(*fused, {}, plan).ok());
  fs::create_directory(dir / "out");
  ExecOptions options;
  options.buffer_bytes = 256;  // windows smaller than a row of W
  auto manifest = execute_plan(plan, dir / "out", options);
  REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);
  auto hashed = hash_plan(plan, options);
  REQUIRE(hashed.ok());
  CHECK(hashed->files[0].tensors.size() == manifest->files[0].tensors.size());
  for (std::size_t i = 0; i < hashed->files[0].tensors.size(); ++i)
    CHECK(hashed->files[0].tensors[i].xxh3_128 == manifest->files[0].tensors[i].xxh3_128);

  auto got = values_of(dir / "out/model.safetensors");
  auto want = values_of(kLoraFixtures / "peft_fused.safetensors");
  REQUIRE(got.size() == want.size());
  std::size_t exact = 0, total = 0;
  for (const auto& [name, values] : want) {
    CAPTURE(name);
    REQUIRE(got.count(name));
    REQUIRE(got[name].size() == values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
      float d = std::fabs(got[name][i] - values[i]);
      CHECK(d <= 1e-6f * std::max(1.0f, std::fabs(values[i])));
      exact += d == 0;
      ++total;
    }
  }
  MESSAGE("fused toy model: " << exact << "/" << total << " elements bit-exact with torch");
}
