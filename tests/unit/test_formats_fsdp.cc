// verl FSDP reader/merger against checkpoints written by real torch (FSDP2 on CPU, gloo):
// tests/fixtures/fsdp/, made by tools/fixtures/make_fsdp_fixtures.py. Each case is merged, planned
// and executed by the real executor; every output tensor must equal expected.safetensors (the
// unsharded state dict, saved by torch in the same run) byte for byte.
#include <doctest/doctest.h>

#include "temp_dir.h"

#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "exec/executor.h"
#include "formats/verl_fsdp.h"
#include "io/input_file.h"
#include "safetensors/safetensors.h"

using namespace ckptstream;
namespace fs = std::filesystem;

namespace {

// The reader of the table (formats/source_model.h) that recognises `dir`, "" for none.
std::string detected(const fs::path& dir) {
  auto found = detect_checkpoint(dir);
  return found.ok() && found.value() ? std::string(found->reader->name) : std::string();
}

const fs::path kFixtures = fs::path(CKPT_FIXTURES) / "fsdp";

using testing::TempDir;
using testing::write_file;

struct StoredTensor {
  DType dtype;
  Shape shape;
  std::string bytes;
};

// Every tensor of a safetensors file, with its bytes.
std::map<std::string, StoredTensor> read_safetensors(const fs::path& path) {
  auto file = InputFile::open(path);
  REQUIRE(file.ok());
  auto header = safetensors::read_header(*file);
  REQUIRE_MESSAGE(header.ok(), path.string());
  std::map<std::string, StoredTensor> out;
  for (const auto& entry : header->tensors) {
    std::string bytes(entry.data_end - entry.data_begin, '\0');
    REQUIRE(file->read_at(header->data_start + entry.data_begin,
                          std::as_writable_bytes(std::span(bytes.data(), bytes.size())))
                .ok());
    out[entry.name] = StoredTensor{entry.dtype, entry.shape, std::move(bytes)};
  }
  return out;
}

// find -> merge -> plan -> execute, as `merge --backend fsdp --dtype keep` will do.
Result<Manifest> convert(const fs::path& dir, const fs::path& target, SourceTensors* merged_out) {
  fs::create_directories(target);
  CKPT_ASSIGN_OR_RETURN(auto checkpoint, find_fsdp_checkpoint(dir));
  CKPT_ASSIGN_OR_RETURN(auto merged, merge_fsdp_tensors(checkpoint));
  Plan plan;
  plan.inputs = merged.inputs;
  CKPT_TRY(safetensors::plan_output(merged.tensors, {}, plan));
  if (merged_out) *merged_out = merged;
  return execute_plan(plan, target, {});
}

// The merged output of a fixture case equals its expected.safetensors, byte for byte.
SourceTensors check_case(const std::string& name, const fs::path& dir) {
  INFO("case " << name);
  TempDir tmp("out_" + name);
  SourceTensors merged;
  auto manifest = convert(dir, tmp.path / "out", &merged);
  REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);
  REQUIRE(manifest->files.size() == 1);
  auto got = read_safetensors(tmp.path / "out" / manifest->files[0].name);
  auto want = read_safetensors(kFixtures / name / "expected.safetensors");
  CHECK(got.size() == want.size());
  for (const auto& [tensor, expected] : want) {
    INFO("tensor " << tensor);
    auto it = got.find(tensor);
    REQUIRE(it != got.end());
    CHECK(it->second.dtype == expected.dtype);
    CHECK(it->second.shape == expected.shape);
    CHECK(it->second.bytes == expected.bytes);
  }
  return merged;
}

const LogicalTensor& tensor_named(const SourceTensors& merged, const std::string& name) {
  for (const auto& t : merged.tensors)
    if (t.name == name) return t;
  FAIL("no tensor " << name);
  return merged.tensors.front();
}

std::set<std::size_t> inputs_read(const LogicalTensor& tensor) {
  std::set<std::size_t> inputs;
  for (const auto& f : tensor.fragments) inputs.insert(f.source.input);
  return inputs;
}

// `accept_renamed`: read rank files saved under another rank's name (to reach the later checks).
std::string error_of(const fs::path& dir, bool accept_renamed = false) {
  auto checkpoint = find_fsdp_checkpoint(dir);
  if (!checkpoint.ok()) return checkpoint.error().message;
  checkpoint->accept_renamed_rank_files = accept_renamed;
  auto merged = merge_fsdp_tensors(*checkpoint);
  if (!merged.ok()) return merged.error().message;
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("fsdp: every fixture case merges to the expected state dict, byte for byte") {
  for (const char* name : {"w1_fsdp", "w1_plain", "w2", "w3", "w4", "hsdp", "shard1", "tied",
                           "bf16", "critic", "empty", "mesh_reversed"}) {
    check_case(name, kFixtures / name);
  }
}

TEST_CASE("fsdp: the layout is found from fsdp_config.json or from the file names") {
  auto w4 = find_fsdp_checkpoint(kFixtures / "w4");
  REQUIRE(w4.ok());
  CHECK(w4->world_size == 4);
  CHECK(w4->fsdp_version == 2);
  REQUIRE(w4->rank_files.size() == 4);
  CHECK(w4->rank_files[2] == kFixtures / "w4" / "model_world_size_4_rank_2.pt");
  REQUIRE(w4->hf_dir);
  CHECK(*w4->hf_dir == kFixtures / "w4" / "huggingface");
  REQUIRE(!w4->notes.empty());
  CHECK(w4->notes[0] == "world size 4 from fsdp_config.json (FSDP2)");

  auto plain = find_fsdp_checkpoint(kFixtures / "w1_plain");
  REQUIRE(plain.ok());
  CHECK(plain->world_size == 1);
  CHECK(plain->fsdp_version == 0);
  CHECK(plain->notes[0] == "world size 1 from the file names (no fsdp_config.json)");

  CHECK(detected(kFixtures / "w2") == "fsdp");
  CHECK(detected(kFixtures / "w2" / "huggingface") == "");
  CHECK(detected(kFixtures / "nonexistent") == "");
}

TEST_CASE("fsdp: older model_rank_R.pt names, no fsdp_config.json; optim and extra never read") {
  TempDir tmp("old_names");
  fs::path dir = tmp.copy_of(kFixtures / "w3", "w31");
  fs::remove(dir / "fsdp_config.json");
  for (int r = 0; r < 3; ++r) {
    fs::rename(dir / ("model_world_size_3_rank_" + std::to_string(r) + ".pt"),
               dir / ("model_rank_" + std::to_string(r) + ".pt"));
    // Garbage trainer state beside the model: opening it would fail the merge.
    write_file(dir / ("optim_rank_" + std::to_string(r) + ".pt"), "not a torch file");
    write_file(dir / ("extra_state_rank_" + std::to_string(r) + ".pt"), "not a torch file");
  }
  auto checkpoint = find_fsdp_checkpoint(dir);
  REQUIRE(checkpoint.ok());
  CHECK(checkpoint->world_size == 3);
  CHECK(checkpoint->notes ==
        std::vector<std::string>{"world size 3 from the file names (no fsdp_config.json)",
                                 "older file names model_rank_{R}.pt"});
  check_case("w3", dir);
}

TEST_CASE("fsdp: fragments follow the placements") {
  auto w4 = check_case("w4", kFixtures / "w4");
  CHECK(w4.inputs.size() == 4);
  // 6 rows over 4 ranks: 2, 2, 2 and an empty shard on rank 3, which contributes nothing.
  const auto& k = tensor_named(w4, "model.layers.0.self_attn.k_proj.weight");
  CHECK(k.shape == Shape{6, 14});
  CHECK(k.dtype == DType::kF32);
  REQUIRE(k.fragments.size() == 3);
  CHECK(k.fragments[2].offsets == Shape{4, 0});
  CHECK(k.fragments[2].source.shape == Shape{2, 14});
  CHECK(k.fragments[2].source.input == 2);
  // A buffer is read once, from rank 0.
  const auto& buffer = tensor_named(w4, "model.layers.1.rope_table");
  REQUIRE(buffer.fragments.size() == 1);
  CHECK(buffer.fragments[0].source.input == 0);
  CHECK(buffer.fragments[0].source.strides == Shape{1, 4});

  // HSDP: ranks 0 and 1 (ddp coordinate 0) hold one replica; 2 and 3 are only checked.
  auto hsdp = check_case("hsdp", kFixtures / "hsdp");
  CHECK(hsdp.inputs.size() == 4);
  for (const auto& t : hsdp.tensors) {
    auto read = inputs_read(t);
    CHECK((read == std::set<std::size_t>{0} || read == std::set<std::size_t>{0, 1}));
  }
  const auto& embed = tensor_named(hsdp, "model.embed_tokens.weight");
  CHECK(inputs_read(embed) == std::set<std::size_t>{0, 1});
  CHECK(embed.fragments[1].offsets == Shape{19, 0});

  // Shard(1): column halves.
  auto shard1 = check_case("shard1", kFixtures / "shard1");
  const auto& gate = tensor_named(shard1, "model.layers.0.mlp.gate_proj.weight");
  REQUIRE(gate.fragments.size() == 2);
  CHECK(gate.fragments[1].offsets == Shape{0, 7});
  CHECK(gate.fragments[1].source.shape == Shape{19, 7});

  // Tied embeddings stay two tensors over the same bytes; the mapping layer drops one.
  auto tied = check_case("tied", kFixtures / "tied");
  const auto& head = tensor_named(tied, "lm_head.weight");
  const auto& emb = tensor_named(tied, "model.embed_tokens.weight");
  REQUIRE(head.fragments.size() == emb.fragments.size());
  for (std::size_t i = 0; i < head.fragments.size(); ++i)
    CHECK(head.fragments[i].source.storage_begin == emb.fragments[i].source.storage_begin);

  auto bf16 = check_case("bf16", kFixtures / "bf16");
  CHECK(tensor_named(bf16, "model.norm.weight").dtype == DType::kBF16);
  CHECK(tensor_named(bf16, "model.norm.weight").source_dtype == DType::kBF16);

  // The value head [1, H]: one row on rank 0, nothing on ranks 1 and 2.
  auto critic = check_case("critic", kFixtures / "critic");
  CHECK(inputs_read(tensor_named(critic, "score.weight")) == std::set<std::size_t>{0});

  // DeviceMesh("cpu", [1, 0]): the mesh puts rank 0 at coordinate 1, but FSDP2 shards by the
  // rank's place in the (sorted) process group, so rank 0 holds the first 19 of 37 rows, as
  // expected.safetensors (the unsharded model) confirms byte for byte in check_case.
  auto reversed = check_case("mesh_reversed", kFixtures / "mesh_reversed");
  const auto& head_rows = tensor_named(reversed, "lm_head.weight");
  REQUIRE(head_rows.fragments.size() == 2);
  CHECK(head_rows.fragments[0].source.input == 0);
  CHECK(head_rows.fragments[0].source.shape == Shape{19, 14});
  CHECK(head_rows.fragments[1].source.input == 1);
  CHECK(head_rows.fragments[1].offsets == Shape{19, 0});
}

TEST_CASE("fsdp: a missing rank, a world size that disagrees, two layouts in one directory") {
  TempDir tmp("layout_errors");
  fs::path missing = tmp.copy_of(kFixtures / "w4", "w42");
  fs::remove(missing / "model_world_size_4_rank_2.pt");
  auto error = error_of(missing);
  CHECK(contains(error, (missing / "model_world_size_4_rank_2.pt").string() + " is missing"));
  CHECK(contains(error, "world size 4 from fsdp_config.json"));

  fs::path no_config = tmp.path / "no_config";
  fs::copy(missing, no_config, fs::copy_options::recursive);
  fs::remove(no_config / "fsdp_config.json");
  CHECK(contains(error_of(no_config), "model_world_size_4_rank_2.pt is missing"));

  fs::path disagree = tmp.copy_of(kFixtures / "w2", "w23");
  write_file(disagree / "fsdp_config.json", R"({"FSDP_version": 2, "world_size": 4})");
  error = error_of(disagree);
  CHECK(contains(error, "fsdp_config.json says world_size 4"));
  CHECK(contains(error, "model_world_size_2_rank_*.pt"));

  fs::path bad_config = tmp.path / "bad_config";
  fs::copy(disagree, bad_config, fs::copy_options::recursive);
  write_file(bad_config / "fsdp_config.json", R"({"FSDP_version": 2})");
  CHECK(contains(error_of(bad_config), "world_size is not a positive integer"));

  fs::path two = tmp.copy_of(kFixtures / "w3", "w34");
  fs::copy(kFixtures / "w2" / "model_world_size_2_rank_0.pt", two);
  error = error_of(two);
  CHECK(contains(error, "two layouts"));
  CHECK(contains(error, "model_world_size_2_rank_*.pt"));
  CHECK(contains(error, "model_world_size_3_rank_*.pt"));

  fs::path extra = tmp.copy_of(kFixtures / "w2", "w25");
  fs::copy(extra / "model_world_size_2_rank_1.pt", extra / "model_world_size_2_rank_2.pt");
  CHECK(contains(error_of(extra), "rank 2 is outside world size 2"));

  fs::path empty = tmp.path / "empty";
  fs::create_directories(empty);
  CHECK(contains(error_of(empty), "no verl FSDP model shards"));
  CHECK(contains(error_of(tmp.path / "absent"), "not a directory"));
}

TEST_CASE("fsdp: a truncated rank file is named, and nothing is written") {
  TempDir tmp("truncated");
  fs::path dir = tmp.copy_of(kFixtures / "w2", "w26");
  fs::path rank1 = dir / "model_world_size_2_rank_1.pt";
  fs::resize_file(rank1, fs::file_size(rank1) / 2);
  auto result = convert(dir, tmp.path / "out", nullptr);
  REQUIRE(!result.ok());
  CHECK(contains(result.error().message, rank1.string()));
  CHECK(fs::is_empty(tmp.path / "out"));
}

TEST_CASE("fsdp: local shards of the wrong shape, on a shard or on a replica") {
  TempDir tmp("shapes");
  // Rank 2 of 3 holding rank 0's file: 13 rows where torch.chunk gives 11.
  fs::path swapped = tmp.copy_of(kFixtures / "w3", "w37");
  fs::copy(swapped / "model_world_size_3_rank_0.pt", swapped / "model_world_size_3_rank_2.pt",
           fs::copy_options::overwrite_existing);
  // The name torch.save recorded gives it away first; read anyway, its shards do not fit.
  CHECK(contains(error_of(swapped),
                 "model_world_size_3_rank_2.pt was saved as "
                 "model_world_size_3_rank_0.pt"));
  auto error = error_of(swapped, true);
  CHECK(contains(error, "tensor model.embed_tokens.weight: rank 2 ("));
  CHECK(contains(error,
                 "holds a local shard of shape [13, 14], but (Shard(0)) of [37, 14] over "
                 "mesh (fsdp=3) gives [11, 14] at mesh coordinate [2]"));

  // HSDP: rank 3 (the second replica) holding rank 2's file is caught though it is not read.
  fs::path replica = tmp.copy_of(kFixtures / "hsdp", "hsdp8");
  fs::copy(replica / "model_world_size_4_rank_2.pt", replica / "model_world_size_4_rank_3.pt",
           fs::copy_options::overwrite_existing);
  error = error_of(replica, true);
  CHECK(contains(error, "rank 3 ("));
  CHECK(contains(error, "(Replicate(), Shard(0))"));
  CHECK(contains(error, "mesh (ddp=2 x fsdp=2)"));
}

TEST_CASE("fsdp: a key missing on one rank, and a plain tensor that differs between ranks") {
  auto error = error_of(kFixtures / "err_missing_key");
  CHECK(contains(error, "tensor lm_head.weight is in rank 0's file"));
  CHECK(contains(error,
                 "missing from rank 1 (" +
                     (kFixtures / "err_missing_key" / "model_world_size_2_rank_1.pt").string()));

  error = error_of(kFixtures / "err_buffer_differs");
  CHECK(contains(error, "tensor model.layers.0.layer_scalar: "));
  CHECK(contains(error, "values differ between rank 0"));
  CHECK(contains(error, "model_world_size_2_rank_1.pt"));

  TempDir tmp("differs");
  auto result = convert(kFixtures / "err_buffer_differs", tmp.path / "out", nullptr);
  CHECK(!result.ok());
  CHECK(fs::is_empty(tmp.path / "out"));
}

TEST_CASE("fsdp: Partial, _StridedShard and a tp mesh dimension are unsupported, named") {
  auto checkpoint = find_fsdp_checkpoint(kFixtures / "err_partial");
  REQUIRE(checkpoint.ok());
  auto merged = merge_fsdp_tensors(*checkpoint);
  REQUIRE(!merged.ok());
  CHECK(merged.error().kind == ErrorKind::kUnsupported);
  CHECK(merged.error().message ==
        "tensor score.weight: placement Partial(sum) is not supported (values are not reduced)");

  auto error = error_of(kFixtures / "err_strided_shard");
  CHECK(contains(error,
                 "tensor score.weight: placement _StridedShard(dim=0, split_factor=2) is "
                 "not supported"));

  checkpoint = find_fsdp_checkpoint(kFixtures / "err_tp");
  REQUIRE(checkpoint.ok());
  merged = merge_fsdp_tensors(*checkpoint);
  REQUIRE(!merged.ok());
  CHECK(merged.error().kind == ErrorKind::kUnsupported);
  CHECK(contains(merged.error().message, "tensor score.weight: mesh dimension 'tp'"));
}

TEST_CASE("fsdp: rank files read on 1, 2 or 8 threads give the same tensors and fragments") {
  auto describe = [](const SourceTensors& merged) {
    std::string out;
    for (const auto& t : merged.tensors) {
      out += t.name + " " + std::to_string(t.fragments.size()) + ":";
      for (const auto& f : t.fragments)
        out += " " + std::to_string(f.source.input) + "@" + std::to_string(f.source.storage_begin) +
               "+" + std::to_string(f.offsets[0]);
      out += "\n";
    }
    for (const auto& note : merged.notes) out += note + "\n";
    return out;
  };
  for (const char* name : {"w4", "hsdp", "w3"}) {
    INFO("case " << name);
    auto checkpoint = find_fsdp_checkpoint(kFixtures / name);
    REQUIRE(checkpoint.ok());
    auto one = merge_fsdp_tensors(*checkpoint, 1);
    REQUIRE_MESSAGE(one.ok(), one.error().message);
    for (unsigned threads : {2u, 8u}) {
      auto many = merge_fsdp_tensors(*checkpoint, threads);
      REQUIRE_MESSAGE(many.ok(), many.error().message);
      CHECK(describe(*many) == describe(*one));
    }
  }
}

TEST_CASE("fsdp: a bad rank file is named whichever thread reads it") {
  TempDir tmp("bad_rank_threads");
  for (const auto& entry : fs::directory_iterator(kFixtures / "w4"))
    fs::copy(entry.path(), tmp.path / entry.path().filename(), fs::copy_options::recursive);
  auto rank2 = tmp.path / "model_world_size_4_rank_2.pt";
  fs::resize_file(rank2, fs::file_size(rank2) / 2);
  for (unsigned threads : {1u, 4u}) {
    auto checkpoint = find_fsdp_checkpoint(tmp.path);
    REQUIRE(checkpoint.ok());
    auto merged = merge_fsdp_tensors(*checkpoint, threads);
    REQUIRE(!merged.ok());
    CHECK(contains(merged.error().message, rank2.string()));
  }
}

TEST_CASE("fsdp: shard positions follow torch's sorted process groups, not the mesh order") {
  auto positions = [](Shape shape, std::vector<std::int64_t> ranks) {
    DeviceMeshInfo mesh;
    mesh.shape = std::move(shape);
    mesh.ranks = std::move(ranks);
    return fsdp_shard_positions(mesh);
  };
  using Positions = std::optional<std::vector<std::size_t>>;
  // init_device_mesh's meshes: the rank order.
  CHECK(positions({4}, {0, 1, 2, 3}) == Positions({0, 1, 2, 3}));
  CHECK(positions({2, 2}, {0, 1, 2, 3}) == Positions({0, 1, 2, 3}));
  // One group of all ranks, sorted: the mesh order does not matter (fixture mesh_reversed).
  CHECK(positions({2}, {1, 0}) == Positions({0, 1}));
  CHECK(positions({3}, {2, 0, 1}) == Positions({0, 1, 2}));
  // Strided groups: rows {0, 2} and {1, 3} along dim 1, columns {0, 1} and {2, 3} along dim 0.
  CHECK(positions({2, 2}, {0, 2, 1, 3}) == Positions({0, 2, 1, 3}));
  // Rows {0, 3}, {2, 1}; columns {0, 2}, {3, 1}: ranks 2 and 3 both at (1, 1).
  CHECK(positions({2, 2}, {0, 3, 2, 1}) == std::nullopt);
}
