// The pieces of convert --to megatron on hand-made tensors: the DCP writer's .metadata read back
// by the DCP reader, torch.save archives holding Python objects, and the parallel layout (which
// rank holds which box of which key, under which name, with which _extra_state objects). Real
// checkpoints compared with megatron-core's are in tests/interop/test_megatron_write.sh, round
// trips through the reader in tests/cli/test_megatron_write.sh.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "dcp/dcp_metadata.h"
#include "dcp/dcp_writer.h"
#include "mapping/megatron_parallel.h"
#include "pickle/unpickler.h"
#include "pickle/value.h"
#include "plan_builders.h"
#include "torch/torch_writer.h"
#include "zip/zip_archive.h"

using namespace ckptstream;

namespace {

LogicalTensor bf16(const std::string& name, Shape shape) {
  TensorRef ref;
  ref.dtype = DType::kBF16;
  ref.shape = shape;
  ref.strides = contiguous_strides(shape);
  ref.storage_nbytes = static_cast<std::uint64_t>(numel(shape) * 2);
  LogicalTensor t = testing::tensor(name, shape, {Fragment{ref, Shape(shape.size(), 0)}});
  t.source_dtype = t.dtype = DType::kBF16;
  return t;
}

std::span<const std::byte> bytes_of(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

// The pickle of a torch.save archive held in memory.
std::string data_pkl(const std::string& archive) {
  auto zip = zip::Archive::parse(bytes_of(archive), "archive");
  REQUIRE(zip.ok());
  for (const auto& entry : zip->entries())
    if (entry.name.ends_with("/data.pkl"))
      return archive.substr(static_cast<std::size_t>(entry.data_offset),
                            static_cast<std::size_t>(entry.size));
  FAIL("no data.pkl");
  return {};
}

}  // namespace

TEST_CASE("plan_dcp_output: .metadata read back by the DCP reader, items laid out in order") {
  dcp::FileToWrite file;
  file.name = "__0_0.distcp";
  file.bytes.push_back({"common_state/shard_0_1", std::string(100, 'c')});
  LogicalTensor a = bf16("w@0.0", Shape{1, 4, 8});
  LogicalTensor b = bf16("w@1.0", Shape{1, 4, 8});
  file.chunks.push_back({"w", Shape{2, 4, 8}, Shape{0, 0, 0}, a});
  file.chunks.push_back({"w", Shape{2, 4, 8}, Shape{1, 0, 0}, b});
  auto out = dcp::plan_dcp_output({file}, "release/");
  REQUIRE(out.ok());
  REQUIRE(out->files.size() == 1);
  const OutputFile& f = out->files[0];
  CHECK(f.name == "release/__0_0.distcp");
  CHECK(f.header.substr(0, 100) == std::string(100, 'c'));  // the byte item first
  REQUIRE(f.tensors.size() == 2);
  CHECK(f.framing != nullptr);

  auto md = dcp::parse_metadata(bytes_of(out->metadata), ".metadata");
  REQUIRE(md.ok());
  CHECK(md->version == "1.0.0");
  std::map<std::string, const dcp::StateDictEntry*> by_fqn;
  for (const auto& e : md->entries) by_fqn[e.fqn] = &e;
  REQUIRE(by_fqn.count("w"));
  REQUIRE(by_fqn.count("common_state/shard_0_1"));
  const auto& w = *by_fqn["w"];
  CHECK(w.kind == dcp::StateDictEntry::Kind::kTensor);
  CHECK(w.dtype == DType::kBF16);
  CHECK(w.size == Shape{2, 4, 8});
  REQUIRE(w.chunks.size() == 2);
  CHECK(w.chunks[1].offsets == Shape{1, 0, 0});
  CHECK(w.chunks[1].sizes == Shape{1, 4, 8});
  REQUIRE(w.chunks[0].storage);
  REQUIRE(w.chunks[1].storage);
  CHECK(w.chunks[0].storage->relative_path == "__0_0.distcp");
  CHECK(w.chunks[0].storage->offset == 100);  // right after the byte item
  // Each chunk is a whole torch.save archive; the second starts where the first ends.
  CHECK(w.chunks[1].storage->offset == 100 + w.chunks[0].storage->length);
  CHECK(f.size() == 100 + w.chunks[0].storage->length + w.chunks[1].storage->length);
  const auto& common = *by_fqn["common_state/shard_0_1"];
  CHECK(common.kind == dcp::StateDictEntry::Kind::kBytes);
  REQUIRE(common.storage);
  CHECK(common.storage->offset == 0);
  CHECK(common.storage->length == 100);
}

TEST_CASE("plan_dcp_output: inconsistent items are refused") {
  dcp::FileToWrite file;
  file.name = "__0_0.distcp";
  file.chunks.push_back({"w", Shape{2, 4}, Shape{1, 0}, bf16("w", Shape{2, 4})});
  auto outside = dcp::plan_dcp_output({file}, "");
  REQUIRE_FALSE(outside.ok());
  CHECK(outside.error().message.find("lies outside") != std::string::npos);

  file.chunks = {{"w", Shape{2, 4}, Shape{0, 0}, bf16("w", Shape{1, 4})},
                 {"w", Shape{3, 4}, Shape{1, 0}, bf16("w", Shape{1, 4})}};
  auto shapes = dcp::plan_dcp_output({file}, "");
  REQUIRE_FALSE(shapes.ok());
  CHECK(shapes.error().message.find("given as [2, 4]") != std::string::npos);

  file.chunks.clear();
  file.bytes = {{"x", "1"}, {"x", "2"}};
  CHECK_FALSE(dcp::plan_dcp_output({file}, "").ok());
}

TEST_CASE("torch.save archives of Python objects: Namespace, list, floats, tensors by reference") {
  TorchObject root = TorchObject::container(TorchObject::Kind::kDict);
  TorchObject& args = root.set("args", TorchObject::container(TorchObject::Kind::kNamespace));
  args.set("num_layers", TorchObject::of(std::int64_t{4}));
  args.set("swiglu", TorchObject::of(true));
  args.set("params_dtype", TorchObject::global("torch bfloat16"));
  args.set("virtual_pipeline_model_parallel_size", TorchObject::none());
  root.set("checkpoint_version", TorchObject::of(3.0));
  TorchObject& model = root.set("model", TorchObject::container(TorchObject::Kind::kOrderedDict));
  model.set("w", TorchObject::tensor_at(0));
  model.set("w._extra_state", TorchObject::none());
  TorchWriteOptions options;
  options.root = root;
  auto layout = plan_torch_zip({TorchWriteTensor{{"w"}, DType::kBF16, Shape{2, 2}}}, options);
  REQUIRE(layout.ok());
  auto parsed = pickle::unpickle(bytes_of(layout->pickle));
  REQUIRE(parsed.ok());
  const pickle::Value& dict = *parsed->value;
  REQUIRE(dict.kind == pickle::Kind::kDict);
  const pickle::Value* ns = dict.find("args");
  REQUIRE(ns != nullptr);
  CHECK(ns->class_name() == "Namespace");
  CHECK(ns->attr("num_layers")->as_int() == 4);
  CHECK(ns->attr("params_dtype")->kind == pickle::Kind::kGlobal);
  CHECK(dict.find("checkpoint_version")->kind == pickle::Kind::kFloat);
  CHECK(layout->tensor_key == std::vector<std::string>{"0"});

  // A tensor met twice, or never, is an error.
  TorchWriteOptions twice;
  twice.root = TorchObject::container(TorchObject::Kind::kList);
  twice.root->items = {TorchObject::tensor_at(0), TorchObject::tensor_at(0)};
  CHECK_FALSE(plan_torch_zip({TorchWriteTensor{{"w"}, DType::kBF16, Shape{2}}}, twice).ok());
  TorchWriteOptions never;
  never.root = TorchObject::container(TorchObject::Kind::kList);
  CHECK_FALSE(plan_torch_zip({TorchWriteTensor{{"w"}, DType::kBF16, Shape{2}}}, never).ok());

  // A ShardedObject payload: torch.save([None]), a whole archive with no tensor.
  TorchWriteOptions list;
  list.root = TorchObject::container(TorchObject::Kind::kList);
  list.root->items.push_back(TorchObject::none());
  auto empty = plan_torch_zip({}, list);
  REQUIRE(empty.ok());
  std::string archive = torch_zip_bytes(*empty);
  CHECK(archive.size() == empty->file_size);
  auto none_list = pickle::unpickle(bytes_of(data_pkl(archive)));
  REQUIRE(none_list.ok());
  REQUIRE(none_list->value->items().size() == 1);
  CHECK(none_list->value->items()[0]->kind == pickle::Kind::kNone);
}

namespace {

// A two-layer dense model's canonical tensors (hidden 8, ffn 4, 2 groups of 2 heads of dim 2).
std::vector<LogicalTensor> dense_canonical() {
  std::vector<LogicalTensor> t;
  t.push_back(bf16("embedding.word_embeddings.weight", Shape{16, 8}));
  for (int i = 0; i < 2; ++i) {
    std::string p = "decoder.layers." + std::to_string(i) + ".";
    t.push_back(bf16(p + "input_layernorm.weight", Shape{8}));
    t.push_back(bf16(p + "self_attention.linear_qkv.weight", Shape{16, 8}));
    t.push_back(bf16(p + "self_attention.linear_proj.weight", Shape{8, 8}));
    t.push_back(bf16(p + "pre_mlp_layernorm.weight", Shape{8}));
    t.push_back(bf16(p + "mlp.linear_fc1.weight", Shape{8, 8}));
    t.push_back(bf16(p + "mlp.linear_fc2.weight", Shape{8, 4}));
  }
  t.push_back(bf16("decoder.final_layernorm.weight", Shape{8}));
  t.push_back(bf16("output_layer.weight", Shape{16, 8}));
  return t;
}

std::map<std::string, std::vector<Shape>> chunks_of(const MegatronRankLayout& layout,
                                                    const std::string& key) {
  std::map<std::string, std::vector<Shape>> out;
  for (const auto& f : layout.files)
    for (const auto& p : f.models[0])
      if (p.key == key) out["__" + std::to_string(f.rank)].push_back(p.offsets);
  return out;
}

}  // namespace

TEST_CASE("layout_megatron torch_dist: stacked keys, TP chunks, [gate; up] in 2 x TP chunks") {
  MegatronModelFacts facts{2, 0, false};
  MegatronParallel par;
  par.tp = 2;
  auto layout = layout_megatron(dense_canonical(), facts, par, MegatronSpec::kLocal,
                                MegatronFormat::kTorchDist);
  REQUIRE(layout.ok());
  REQUIRE(layout->files.size() == 2);
  CHECK(layout->description.find("stacked layers") != std::string::npos);
  // Column-parallel QKV: rank r holds rows [8r, 8r + 8) of every layer, a leading layer axis.
  auto qkv = chunks_of(*layout, "decoder.layers.self_attention.linear_qkv.weight");
  CHECK(qkv["__0"] == std::vector<Shape>{{0, 0, 0}, {1, 0, 0}});
  CHECK(qkv["__1"] == std::vector<Shape>{{0, 8, 0}, {1, 8, 0}});
  // [gate; up] (4 rows each): rank r holds gate rows [2r, 2r + 2) and up rows [4 + 2r, ...).
  auto fc1 = chunks_of(*layout, "decoder.layers.mlp.linear_fc1.weight");
  CHECK(fc1["__1"] == std::vector<Shape>{{0, 2, 0}, {0, 6, 0}, {1, 2, 0}, {1, 6, 0}});
  // Row-parallel: columns.
  auto proj = chunks_of(*layout, "decoder.layers.self_attention.linear_proj.weight");
  CHECK(proj["__1"] == std::vector<Shape>{{0, 0, 4}, {1, 0, 4}});
  // The local spec's keys map fuses the norms into linear_qkv / linear_fc1; written once.
  auto norm = chunks_of(*layout, "decoder.layers.self_attention.linear_qkv.layer_norm_weight");
  CHECK(norm.size() == 1);
  CHECK(norm["__0"].size() == 2);
  for (const auto& f : layout->files)
    for (const auto& p : f.models[0]) {
      CHECK(p.data.shape.size() == p.global_shape.size());
      CHECK(p.data.name.find('@') != std::string::npos);
    }
  std::set<std::string> extra(layout->files[0].extra_states[0].begin(),
                              layout->files[0].extra_states[0].end());
  CHECK(extra.count("decoder.layers.self_attention.linear_qkv._extra_state/shard_1_2"));
  CHECK_FALSE(extra.count("decoder.layers.self_attention.core_attention._extra_state/shard_1_2"));

  // Transformer Engine: its attention kernel has an _extra_state too.
  auto te = layout_megatron(dense_canonical(), facts, par, MegatronSpec::kTransformerEngine,
                            MegatronFormat::kTorchDist);
  REQUIRE(te.ok());
  const auto& te_extra = te->files[0].extra_states[0];
  CHECK(std::count(te_extra.begin(), te_extra.end(),
                   "decoder.layers.self_attention.core_attention._extra_state/shard_0_2") == 1);
}

TEST_CASE("layout_megatron legacy: local layer numbers per stage, per-rank [gate_r; up_r]") {
  MegatronModelFacts facts{2, 0, true};
  MegatronParallel par;
  par.tp = 2;
  par.pp = 2;
  auto tensors = dense_canonical();
  tensors.pop_back();  // tied: no output layer
  auto layout = layout_megatron(tensors, facts, par, MegatronSpec::kLocal, MegatronFormat::kLegacy);
  REQUIRE(layout.ok());
  std::map<std::string, const MegatronRankFile*> by_dir;
  for (const auto& f : layout->files) by_dir[f.dir] = &f;
  REQUIRE(by_dir.size() == 4);
  REQUIRE(by_dir.count("mp_rank_01_001"));
  std::set<std::string> keys;
  for (const auto& p : by_dir["mp_rank_01_001"]->models[0]) keys.insert(p.key);
  // Global layer 1 is the last stage's local layer 0; a tied model's last stage holds the
  // output layer's copy of the embedding.
  CHECK(keys.count("decoder.layers.0.mlp.linear_fc1.weight"));
  CHECK(keys.count("decoder.layers.0.input_layernorm.weight"));
  CHECK(keys.count("output_layer.weight"));
  CHECK_FALSE(keys.count("embedding.word_embeddings.weight"));
  for (const auto& p : by_dir["mp_rank_01_001"]->models[0])
    if (p.key == "decoder.layers.0.mlp.linear_fc1.weight") {
      CHECK(p.data.shape == Shape{4, 8});  // gate rows [2, 4) and up rows [6, 8)
      REQUIRE(p.data.fragments.size() == 2);
      CHECK(p.data.fragments[0].source.offset == 2 * 8);
      CHECK(p.data.fragments[1].source.offset == 6 * 8);
    }
  const auto& extra = by_dir["mp_rank_01_001"]->extra_states[0];
  CHECK(std::count(extra.begin(), extra.end(), "output_layer._extra_state") == 1);
}

TEST_CASE("check_megatron_parallel: sizes that do not divide are refused, naming them") {
  MegatronModelFacts facts{4, 8, false};
  MegatronParallel par;
  par.tp = 3;
  auto bad_tp = check_megatron_parallel(par, 6, 2, 12, 4, facts);
  REQUIRE_FALSE(bad_tp.ok());
  CHECK(bad_tp.error().message.find("2 query groups") != std::string::npos);
  par.tp = 1;
  par.ep = 3;
  CHECK(check_megatron_parallel(par, 6, 2, 12, 4, facts).error().message.find("8 experts") !=
        std::string::npos);
  par.ep = 2;
  par.pp = 3;
  CHECK_FALSE(check_megatron_parallel(par, 6, 2, 12, 4, facts).ok());
  par.pp = 2;
  CHECK(check_megatron_parallel(par, 6, 2, 12, 4, facts).ok());
}
