// DCP checkpoints written by real torch (tests/fixtures/dcp/, tools/fixtures/make_dcp_fixtures.py:
// torch 2.6 and 2.14, FSDP2 on CPU) read by read_dcp_tensors, planned and executed by the real
// executor; every output tensor must equal expected.safetensors (torch's own dcp_to_torch_save of
// the same directory) byte for byte. Error cases use temporary copies with mutated metadata
// (written by torch in the generator) or truncated files.
#include <doctest/doctest.h>

#include "temp_dir.h"

#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "dcp/dcp_metadata.h"
#include "exec/executor.h"
#include "formats/dcp_checkpoint.h"
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

const fs::path kFixtures = fs::path(CKPT_FIXTURES) / "dcp";

using testing::TempDir;

struct StoredTensor {
  DType dtype;
  Shape shape;
  std::string bytes;
};

struct SafetensorsFile {
  std::vector<std::string> names;  // file order
  std::map<std::string, StoredTensor> tensors;
};

SafetensorsFile read_safetensors(const fs::path& path) {
  auto file = InputFile::open(path);
  REQUIRE(file.ok());
  auto header = safetensors::read_header(*file);
  REQUIRE_MESSAGE(header.ok(), path.string());
  SafetensorsFile out;
  for (const auto& entry : header->tensors) {
    std::string bytes(entry.data_end - entry.data_begin, '\0');
    REQUIRE(file->read_at(header->data_start + entry.data_begin,
                          std::as_writable_bytes(std::span(bytes.data(), bytes.size())))
                .ok());
    out.names.push_back(entry.name);
    out.tensors[entry.name] = StoredTensor{entry.dtype, entry.shape, std::move(bytes)};
  }
  return out;
}

// read -> plan -> execute, as `merge --backend dcp --dtype keep` does.
Result<Manifest> convert(const fs::path& dir, const fs::path& target, const DcpOptions& options,
                         SourceTensors* merged_out) {
  fs::create_directories(target);
  CKPT_ASSIGN_OR_RETURN(auto merged, read_dcp_tensors(dir, options));
  Plan plan;
  plan.inputs = merged.inputs;
  CKPT_TRY(safetensors::plan_output(merged.tensors, {}, plan));
  if (merged_out) *merged_out = merged;
  return execute_plan(plan, target, {});
}

SourceTensors check_case(const std::string& name, const fs::path& dir, DcpOptions options = {}) {
  INFO("case " << name);
  TempDir tmp("out_" + name);
  if (options.scratch_dir.empty()) options.scratch_dir = tmp.path / "scratch";
  SourceTensors merged;
  auto manifest = convert(dir, tmp.path / "out", options, &merged);
  REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);
  REQUIRE(manifest->files.size() == 1);
  auto got = read_safetensors(tmp.path / "out" / manifest->files[0].name);
  auto want = read_safetensors(kFixtures / name / "expected.safetensors");
  CHECK(got.names == want.names);  // the reference writer's order
  for (const auto& [tensor, expected] : want.tensors) {
    INFO("tensor " << tensor);
    auto it = got.tensors.find(tensor);
    REQUIRE(it != got.tensors.end());
    CHECK(it->second.dtype == expected.dtype);
    CHECK(it->second.shape == expected.shape);
    CHECK(it->second.bytes == expected.bytes);
  }
  return merged;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

bool has_note(const SourceTensors& merged, const std::string& part) {
  for (const auto& n : merged.notes)
    if (contains(n, part)) return true;
  return false;
}

std::vector<std::string> names_of(const SourceTensors& merged) {
  std::vector<std::string> out;
  for (const auto& t : merged.tensors) out.push_back(t.name);
  return out;
}

std::string error_of(const fs::path& dir, const DcpOptions& options = {}) {
  auto merged = read_dcp_tensors(dir, options);
  return merged.ok() ? "" : merged.error().message;
}

}  // namespace

TEST_CASE("nested app state {model, optim}, FSDP2 W=2, torch 2.6") {
  auto merged = check_case("nested_w2", kFixtures / "nested_w2");
  CHECK(has_note(merged, "prefix 'model.' (detected"));
  CHECK(has_note(merged, "skipped 6 optimizer/scheduler tensors (never read)"));
  // State-dict order, and only the .distcp files as inputs.
  CHECK(names_of(merged).front() == "model.embed_tokens.weight");
  CHECK(names_of(merged).back() == "lm_head.weight");
  CHECK(merged.inputs.size() == 2);
  for (const auto& t : merged.tensors) CHECK(t.dtype == t.source_dtype);
}

TEST_CASE("app.model. prefix, FSDP2 W=3 in bfloat16") {
  auto merged = check_case("app_w3_bf16", kFixtures / "app_w3_bf16");
  CHECK(has_note(merged, "prefix 'app.model.'"));
  CHECK(merged.tensors.front().source_dtype == DType::kBF16);
}

TEST_CASE("RLinf layout: fsdp_checkpoint.model., optimizers skipped, empty shards at W=4") {
  fs::path step = kFixtures / "rlinf_w4" / "global_step_2";
  for (const fs::path& dir : {step / "actor", step / "actor" / "dcp_checkpoint", step}) {
    INFO(dir.string());
    CHECK(detected(dir) == "dcp");
    auto merged = check_case("rlinf_w4", dir);
    CHECK(has_note(merged, "prefix 'fsdp_checkpoint.model.'"));
    CHECK(has_note(merged, "optimizer/scheduler tensors (never read)"));
  }
  auto layout = find_dcp_checkpoint(step / "actor");
  REQUIRE(layout.ok());
  REQUIRE(layout->full_weights);
  CHECK(layout->full_weights->filename() == "full_weights.pt");
  CHECK(*layout->dcp_dir == step / "actor" / "dcp_checkpoint");

  // Only full_weights.pt: read with the torch reader, one fragment per tensor.
  TempDir tmp("full_weights");
  fs::path actor = tmp.path / "actor";
  fs::create_directories(actor / "model_state_dict");
  fs::copy(step / "actor" / "model_state_dict" / "full_weights.pt", actor / "model_state_dict");
  CHECK(detected(actor) == "dcp");
  auto merged = check_case("rlinf_w4", actor);
  CHECK(has_note(merged, "full_weights.pt"));
}

TEST_CASE("plain model state dict (no prefix), one file per item, _orig_mod./module. keys") {
  auto merged = check_case("plain", kFixtures / "plain");
  CHECK(has_note(merged, "no prefix"));
  CHECK(names_of(merged).front() == "model.embed_tokens.weight");
  CHECK(merged.inputs.size() == merged.tensors.size());  // __0_K.distcp per item
}

TEST_CASE("torch 2.14 (protocol 5 metadata), plain FSDP2 state dict: model. is part of the key") {
  auto merged = check_case("sid_plain_w2", kFixtures / "sid_plain_w2");
  CHECK(has_note(merged, "no prefix"));
  // An explicit prefix picks a sub-tree and strips it.
  TempDir tmp("explicit");
  auto sub = read_dcp_tensors(kFixtures / "sid_plain_w2", DcpOptions{"model", tmp.path});
  REQUIRE(sub.ok());
  CHECK(names_of(*sub).front() == "embed_tokens.weight");
  CHECK(sub->tensors.size() == merged.tensors.size() - 1);  // lm_head.weight is outside
  CHECK(has_note(*sub, "prefix 'model.' (given)"));
  CHECK(has_note(*sub, "skipped 1 tensors under 'lm_head'"));
  CHECK(contains(error_of(kFixtures / "sid_plain_w2", DcpOptions{"nothing.", tmp.path}),
                 "no model tensor under the prefix 'nothing.'"));
}

TEST_CASE("zstd-compressed items (torch 2.14 ZStandard), {model} alone") {
  TempDir tmp("zstd");
  DcpOptions options{std::nullopt, tmp.path / "scratch"};
  auto merged = check_case("zstd_w2", kFixtures / "zstd_w2", options);
  CHECK(has_note(merged, "prefix 'model.'"));
  // Every chunk was decoded into a scratch file, which the plan reads.
  for (const auto& input : merged.inputs) CHECK(input.parent_path() == tmp.path / "scratch");
}

TEST_CASE("errors: corrupt or missing metadata, truncated .distcp; nothing is written") {
  TempDir tmp("errors");
  fs::path garbage = tmp.copy_of(kFixtures / "nested_w2", "garbage");
  std::ofstream(garbage / ".metadata", std::ios::binary) << "garbage, not a pickle";
  CHECK(contains(error_of(garbage), (garbage / ".metadata").string()));

  fs::path cut = tmp.copy_of(kFixtures / "nested_w2", "cut");
  fs::resize_file(cut / ".metadata", fs::file_size(cut / ".metadata") - 100);
  CHECK(contains(error_of(cut), "pickle"));

  fs::path empty = tmp.path / "empty";
  fs::create_directories(empty);
  CHECK(detected(empty) == "");
  CHECK(contains(error_of(empty), "no DCP checkpoint"));

  fs::path truncated = tmp.copy_of(kFixtures / "nested_w2", "truncated");
  fs::resize_file(truncated / "__1_0.distcp", fs::file_size(truncated / "__1_0.distcp") / 2);
  std::string message = error_of(truncated);
  CHECK(contains(message, "__1_0.distcp"));
  CHECK(contains(message, "past the end of the file"));

  // Through convert: the error comes before the executor writes anything.
  fs::path target = tmp.path / "out";
  auto result = convert(truncated, target, DcpOptions{std::nullopt, tmp.path / "scratch"}, nullptr);
  CHECK(!result.ok());
  CHECK(fs::is_empty(target));
}

TEST_CASE("errors: overlapping, missing and out-of-bounds chunks, unknown transforms") {
  TempDir tmp("mutated");
  struct Case {
    std::string metadata;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"overlap", {"'model.model.embed_tokens.weight'", "overlaps the chunk at (0, 0)"}},
      {"hole", {"'model.model.norm.weight'", "a chunk is missing"}},
      {"outside", {"'model.model.norm.weight'", "lies outside the tensor's size (14)"}},
      {"transform", {"__", "'model.lm_head.weight'", "unknown stream transform 'stream.rot13/1'"}},
      {"version", {"'model.lm_head.weight'", "'stream.zstd/2': version 2 is not supported"}},
  };
  for (const auto& c : cases) {
    INFO(c.metadata);
    fs::path dir = tmp.copy_of(kFixtures / "nested_w2", c.metadata);
    fs::copy_file(kFixtures / "nested_w2" / "errors" / (c.metadata + ".metadata"),
                  dir / ".metadata", fs::copy_options::overwrite_existing);
    std::string message = error_of(dir, DcpOptions{std::nullopt, tmp.path / "scratch"});
    CHECK(!message.empty());
    for (const auto& part : c.parts) CHECK_MESSAGE(contains(message, part), message);
    fs::path target = tmp.path / ("out_" + c.metadata);
    CHECK(!convert(dir, target, DcpOptions{std::nullopt, tmp.path / "scratch"}, nullptr).ok());
    CHECK(fs::is_empty(target));
  }
}

TEST_CASE("items read by several threads: the same fragments, and the first bad item's error") {
  TempDir tmp("threads");
  auto one = read_dcp_tensors(kFixtures / "nested_w2", DcpOptions{std::nullopt, tmp.path / "s", 1});
  REQUIRE_MESSAGE(one.ok(), one.error().message);
  std::size_t fragments = 0;
  for (const auto& t : one->tensors) fragments += t.fragments.size();
  REQUIRE(fragments > 20);
  for (unsigned threads : {2u, 3u, 8u, 0u}) {
    CAPTURE(threads);
    auto many = read_dcp_tensors(kFixtures / "nested_w2",
                                 DcpOptions{std::nullopt, tmp.path / "s", threads});
    REQUIRE_MESSAGE(many.ok(), many.error().message);
    CHECK(many->inputs == one->inputs);
    REQUIRE(many->tensors.size() == one->tensors.size());
    for (std::size_t i = 0; i < one->tensors.size(); ++i) {
      const auto& a = one->tensors[i].fragments;
      const auto& b = many->tensors[i].fragments;
      REQUIRE(a.size() == b.size());
      for (std::size_t f = 0; f < a.size(); ++f) {
        CHECK(a[f].source.input == b[f].source.input);
        CHECK(a[f].source.storage_begin == b[f].source.storage_begin);
        CHECK(a[f].source.shape == b[f].source.shape);
        CHECK(a[f].offsets == b[f].offsets);
      }
    }
  }

  // Two neighbouring items damaged (their zip magic overwritten): the last of the first half of
  // the items and the first of the second. With two threads, the worker given the second half
  // fails at once, long before the other reaches its last item; every thread count must still
  // report the earlier item, as a reading in order does.
  fs::path dir = tmp.copy_of(kFixtures / "nested_w2", "damaged");
  auto md = dcp::read_metadata(dir);
  REQUIRE(md.ok());
  std::vector<std::pair<const dcp::StateDictEntry*, const dcp::ChunkMeta*>> items;  // job order
  for (const auto& e : md->entries)
    if (e.kind == dcp::StateDictEntry::Kind::kTensor && e.fqn.rfind("model.", 0) == 0)
      for (const auto& chunk : e.chunks) items.emplace_back(&e, &chunk);
  REQUIRE(items.size() == fragments);
  auto damage = [&](const dcp::StateDictEntry& e, const dcp::ChunkMeta& chunk) {
    const dcp::StorageInfo* info = md->find(e.fqn, chunk.offsets);
    REQUIRE(info);
    const fs::path file = dir / info->relative_path;
    auto bytes = testing::file_bytes(file);
    REQUIRE(bytes.size() > info->offset);
    REQUIRE(bytes[info->offset] == std::byte{'P'});
    bytes[info->offset] = std::byte{'X'};
    testing::write_file(file, bytes);
  };
  const auto& early = items[items.size() / 2 - 1];
  const auto& late = items[items.size() / 2];
  damage(*early.first, *early.second);
  damage(*late.first, *late.second);
  auto at = [](const Shape& offsets) {
    std::string text = "(";
    for (std::size_t d = 0; d < offsets.size(); ++d)
      text += (d ? ", " : "") + std::to_string(offsets[d]);
    return text + ")";
  };
  const std::string in_order = error_of(dir, DcpOptions{std::nullopt, tmp.path / "s", 1});
  CHECK_MESSAGE(
      contains(in_order, "'" + early.first->fqn + "' chunk at " + at(early.second->offsets)),
      in_order);
  CHECK(contains(in_order, "not a torch.save zip archive"));
  for (unsigned threads : {2u, 3u, 8u}) {
    CAPTURE(threads);
    CHECK(error_of(dir, DcpOptions{std::nullopt, tmp.path / "s", threads}) == in_order);
  }
}
