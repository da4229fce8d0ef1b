// Packed MoE experts -> what transformers 5's save_pretrained writes. Fixtures
// (tests/fixtures/moe/ARCH, tools/fixtures/make_moe_fixtures.py) are tiny random models made by
// real transformers: packed.pt is torch.save(model.state_dict()) of the live model, the
// safetensors files and config.json are model.save_pretrained's output, save_order.json is the
// state-dict order save_pretrained shards in.
#include <doctest/doctest.h>

#include "temp_dir.h"

#include <simdjson.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "exec/executor.h"
#include "formats/hf_config.h"
#include "io/input_file.h"
#include "mapping/experts.h"
#include "plan/views.h"
#include "safetensors/safetensors.h"
#include "torch/torch_checkpoint.h"

using namespace ckptstream;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = fs::path(CKPT_FIXTURES) / "moe";

using testing::TempDir;

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The tensors of a torch.save file, one fragment each, as a format reader hands them over.
std::vector<LogicalTensor> read_packed(const fs::path& path) {
  auto ckpt = read_torch_file(path);
  REQUIRE_MESSAGE(ckpt.ok(), ckpt.error().message);
  std::vector<LogicalTensor> tensors;
  for (std::size_t i = 0; i < ckpt->tensors.size(); ++i) {
    const TorchTensor& t = ckpt->tensors[i];
    LogicalTensor tensor;
    tensor.name = t.name;
    tensor.source_dtype = t.dtype;
    tensor.dtype = t.dtype;
    tensor.shape = t.shape;
    tensor.fragments.push_back(Fragment{ckpt->ref(i, 0), Shape(t.shape.size(), 0)});
    tensors.push_back(std::move(tensor));
  }
  return tensors;
}

HfConfig config_of(const std::string& arch) {
  auto config = read_hf_config(kFixtures / arch / "config.json");
  REQUIRE_MESSAGE(config.ok(), config.error().message);
  return std::move(config).value();
}

std::vector<std::string> names_of(const std::vector<LogicalTensor>& tensors) {
  std::vector<std::string> names;
  for (const auto& tensor : tensors) names.push_back(tensor.name);
  return names;
}

std::vector<std::string> save_order(const std::string& arch) {
  simdjson::dom::parser parser;
  simdjson::padded_string text;
  REQUIRE(
      !simdjson::padded_string::load((kFixtures / arch / "save_order.json").string()).get(text));
  simdjson::dom::array names;
  REQUIRE(!parser.parse(text).get(names));
  std::vector<std::string> out;
  for (auto name : names) out.emplace_back(std::string_view(name.get_string().value()));
  return out;
}

// The weight_map of an index, without its metadata (transformers 5 adds total_parameters).
std::vector<std::pair<std::string, std::string>> weight_map(const fs::path& index) {
  auto parsed = safetensors::read_index(index);
  REQUIRE_MESSAGE(parsed.ok(), parsed.error().message);
  return parsed->weight_map;
}

// Unpacks ARCH's packed.pt, writes it with the planner and executor, and compares every file
// save_pretrained wrote, byte for byte.
void check_matches_save_pretrained(const std::string& arch, const std::string& max_shard = "5GB") {
  CAPTURE(arch);
  fs::path dir = kFixtures / arch;
  HfConfig config = config_of(arch);
  std::vector<std::string> notes;
  auto unpacked = unpack_packed_experts(read_packed(dir / "packed.pt"), config, notes);
  REQUIRE_MESSAGE(unpacked.ok(), unpacked.error().message);
  CHECK(names_of(*unpacked) == save_order(arch));
  CHECK(notes.size() == 1);

  Plan plan;
  plan.inputs.push_back(dir / "packed.pt");
  safetensors::OutputOptions options;
  options.max_shard_size = safetensors::parse_size(max_shard).value();
  auto planned = safetensors::plan_output(*unpacked, options, plan);
  REQUIRE_MESSAGE(planned.ok(), planned.error().message);
  TempDir out(arch);
  auto manifest = execute_plan(plan, out.path, ExecOptions{});
  REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);

  std::vector<std::string> expected_files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".safetensors")
      expected_files.push_back(entry.path().filename().string());
  REQUIRE(plan.files.size() == expected_files.size());
  for (const auto& file : plan.files) {
    CAPTURE(file.name);
    REQUIRE(fs::exists(dir / file.name));
    CHECK(read_bytes(out.path / file.name) == read_bytes(dir / file.name));
  }
  if (fs::exists(dir / kIndexFileName))
    CHECK(weight_map(out.path / kIndexFileName) == weight_map(dir / kIndexFileName));
}

// huggingface_hub's split_torch_state_dict_into_shards, as save_pretrained runs it on the reverted
// state dict: greedy in state-dict order, but tensors sharing one storage (the per-expert views
// transformers cuts from one packed parameter) are one unit, sized by the whole storage and put in
// the shard of the first of them. Here a storage is a source storage of packed.pt, which holds
// every parameter of the live model in its own storage.
std::map<std::string, std::string> hub_split(const std::vector<LogicalTensor>& tensors,
                                             std::uint64_t max_shard_size) {
  std::map<std::uint64_t, std::size_t> shard_of_storage;
  std::vector<std::vector<std::string>> shards(1);
  std::uint64_t current = 0;
  for (const auto& tensor : tensors) {
    const TensorRef& source = tensor.fragments.at(0).source;
    if (auto it = shard_of_storage.find(source.storage_begin); it != shard_of_storage.end()) {
      shards[it->second].push_back(tensor.name);
      continue;
    }
    std::uint64_t size = source.storage_nbytes;
    if (current + size > max_shard_size && !shards.back().empty()) {
      shards.emplace_back();
      current = 0;
    }
    shard_of_storage[source.storage_begin] = shards.size() - 1;
    shards.back().push_back(tensor.name);
    current += size;
  }
  std::map<std::string, std::string> file_of;
  char name[64];
  for (std::size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    for (const auto& tensor : shards[i]) file_of[tensor] = name;
  }
  return file_of;
}

// name -> bytes of every tensor in the safetensors files of `dir`.
std::map<std::string, std::string> tensor_bytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    auto file = InputFile::open(entry.path());
    REQUIRE_MESSAGE(file.ok(), file.error().message);
    auto header = safetensors::read_header(*file);
    REQUIRE_MESSAGE(header.ok(), header.error().message);
    std::string bytes = read_bytes(entry.path());
    for (const auto& t : header->tensors)
      out[t.name] = bytes.substr(header->data_start + t.data_begin, t.data_end - t.data_begin);
  }
  return out;
}

}  // namespace

TEST_CASE("config.json: architecture, sizes and expert counts") {
  HfConfig mixtral = config_of("mixtral");
  CHECK(mixtral.model_type() == "mixtral");
  CHECK(mixtral.architectures == std::vector<std::string>{"MixtralForCausalLM"});
  CHECK(mixtral.num_experts() == 4);
  CHECK(mixtral.hidden_size() == 12);
  CHECK(mixtral.top.num_hidden_layers == 2);
  CHECK(mixtral.tie_word_embeddings == false);
  CHECK(mixtral.dtype == "float32");
  CHECK(config_of("deepseek_v3").num_experts() == 4);   // n_routed_experts
  CHECK(config_of("ernie4_5_moe").num_experts() == 4);  // moe_num_experts

  TempDir dir("config");
  auto vlm = read_hf_config(
      dir.write("vlm.json", R"({"model_type": "qwen3_5_moe", "torch_dtype": "bfloat16",
                      "text_config": {"model_type": "qwen3_5_moe_text", "hidden_size": 12,
                                      "num_experts": 4}})"));
  REQUIRE(vlm.ok());
  CHECK(vlm->dtype == "bfloat16");
  CHECK(vlm->hidden_size() == 12);
  CHECK(vlm->num_experts() == 4);
  REQUIRE(vlm->text_config);
  CHECK(vlm->text_config->model_type == "qwen3_5_moe_text");

  auto bad_type = read_hf_config(dir.write("bad.json", R"({"num_local_experts": "8"})"));
  REQUIRE(!bad_type.ok());
  CHECK(bad_type.error().message.find("bad.json") != std::string::npos);
  CHECK(bad_type.error().message.find("num_local_experts") != std::string::npos);
  auto not_json = read_hf_config(dir.write("broken.json", "{"));
  REQUIRE(!not_json.ok());
  CHECK(not_json.error().message.find("broken.json") != std::string::npos);
  auto missing = read_hf_config(dir.path / "absent.json");
  REQUIRE(!missing.ok());
  CHECK(missing.error().kind == ErrorKind::kIo);
}

TEST_CASE("dot_natural_key order") {
  CHECK(dot_natural_less("a.2.x", "a.10.x"));
  CHECK(!dot_natural_less("a.10.x", "a.2.x"));
  CHECK(dot_natural_less("a.9", "a.b"));  // numbers before words
  CHECK(dot_natural_less("a", "a.b"));    // a prefix first
  CHECK(dot_natural_less("lm_head.weight", "model.embed_tokens.weight"));
  CHECK(dot_natural_less("model.layers.0.mlp.experts.down_proj",
                         "model.layers.0.mlp.experts.gate_up_proj"));
  CHECK(!dot_natural_less("x.1", "x.1"));
  CHECK(dot_natural_less("x.0099999999999999999999", "x.100000000000000000000000"));
}

TEST_CASE("packed experts are written exactly as transformers' save_pretrained writes them") {
  // Mixtral: w1/w3/w2 under block_sparse_moe (float32); PhiMoE and MiniMax-M2 rename the router
  // and the score bias too; Qwen2-MoE has a shared expert; DeepSeek-V3 a dense first layer;
  // ERNIE 4.5, EXAONE-MoE and HY-V3 rename their bias, router or shared expert; Jamba and LFM2-MoE
  // keep experts in feed_forward; Qwen3.5-MoE is a VLM whose MoE settings sit in text_config.
  for (const char* arch :
       {"mixtral", "qwen2_moe", "deepseek_v3", "phimoe", "minimax_m2", "ernie4_5_moe", "exaone_moe",
        "hy_v3", "jamba", "lfm2_moe", "qwen3_5_moe"})
    check_matches_save_pretrained(arch);
}

TEST_CASE("sharded: save_pretrained's order, split and bytes") {
  fs::path dir = kFixtures / "qwen3_moe";
  std::vector<std::string> notes;
  auto unpacked =
      unpack_packed_experts(read_packed(dir / "packed.pt"), config_of("qwen3_moe"), notes);
  REQUIRE(unpacked.ok());
  CHECK(names_of(*unpacked) == save_order("qwen3_moe"));

  // The split of save_pretrained(max_shard_size="2KB") follows from our order once the views of a
  // packed parameter are kept together; module order would split differently.
  auto expected = weight_map(dir / kIndexFileName);
  auto split = hub_split(*unpacked, 2000);
  CHECK(std::map<std::string, std::string>(expected.begin(), expected.end()) == split);
  CHECK(split.at("model.layers.1.mlp.experts.0.down_proj.weight") ==
        "model-00002-of-00003.safetensors");
  CHECK(split.at("model.layers.1.mlp.experts.0.gate_proj.weight") ==
        "model-00003-of-00003.safetensors");

  // Every tensor's bytes, written in one file.
  Plan plan;
  plan.inputs.push_back(dir / "packed.pt");
  REQUIRE(safetensors::plan_output(*unpacked, safetensors::OutputOptions{}, plan).ok());
  TempDir out("qwen3_moe_one_file");
  auto manifest = execute_plan(plan, out.path, ExecOptions{});
  REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);
  auto ours = tensor_bytes(out.path);
  auto theirs = tensor_bytes(dir);
  CHECK(ours.size() == 45);
  CHECK(ours == theirs);
}

// The planner keeps the per-expert views of one packed parameter in one shard, as huggingface_hub
// does (LogicalTensor::shard_group).
TEST_CASE("sharded: plan_output reproduces save_pretrained's files") {
  check_matches_save_pretrained("qwen3_moe", "2KB");
}

TEST_CASE("per-expert slices: gate rows first, up rows second, no byte copied") {
  auto tensors = read_packed(kFixtures / "qwen3_moe" / "packed.pt");
  std::vector<std::string> notes;
  auto out = unpack_packed_experts(tensors, config_of("qwen3_moe"), notes);
  REQUIRE(out.ok());
  const LogicalTensor* packed = nullptr;
  for (const auto& t : tensors)
    if (t.name == "model.layers.1.mlp.experts.gate_up_proj") packed = &t;
  REQUIRE(packed);
  CHECK(packed->shape == Shape{4, 8, 12});
  for (const auto& t : *out) {
    if (t.name != "model.layers.1.mlp.experts.2.up_proj.weight") continue;
    CHECK(t.shape == Shape{4, 12});
    REQUIRE(t.fragments.size() == 1);
    const TensorRef& ref = t.fragments[0].source;
    const TensorRef& whole = packed->fragments[0].source;
    CHECK(ref.storage_begin == whole.storage_begin);
    CHECK(ref.offset == whole.offset + 2 * whole.strides[0] + 4 * whole.strides[1]);
    CHECK(ref.strides == Shape{whole.strides[1], whole.strides[2]});
  }
}

TEST_CASE("pass-through: per-expert checkpoints, non-MoE models, packed-on-disk architectures") {
  std::vector<std::string> notes;
  // Already per-expert (the output of a first pass): nothing changes, not even the order.
  auto first = unpack_packed_experts(read_packed(kFixtures / "mixtral" / "packed.pt"),
                                     config_of("mixtral"), notes);
  REQUIRE(first.ok());
  auto reversed = *first;
  std::reverse(reversed.begin(), reversed.end());
  notes.clear();
  auto second = unpack_packed_experts(reversed, config_of("mixtral"), notes);
  REQUIRE(second.ok());
  CHECK(names_of(*second) == names_of(reversed));
  CHECK(notes.empty());

  // gpt-oss keeps [E, H, 2F] gate_up_proj (interleaved) and biases packed on disk.
  check_matches_save_pretrained("gpt_oss");
  notes.clear();
  auto gpt = unpack_packed_experts(read_packed(kFixtures / "gpt_oss" / "packed.pt"),
                                   config_of("gpt_oss"), notes);
  REQUIRE(gpt.ok());
  CHECK(names_of(*gpt) == names_of(read_packed(kFixtures / "gpt_oss" / "packed.pt")));
  CHECK(notes.size() == 1);

  // A dense model: no packed key, nothing to do.
  HfConfig llama;
  llama.top.model_type = "llama";
  std::vector<LogicalTensor> dense(2);
  dense[0].name = "model.layers.0.mlp.down_proj.weight";
  dense[0].shape = {12, 4};
  dense[1].name = "lm_head.weight";
  dense[1].shape = {16, 12};
  notes.clear();
  auto same = unpack_packed_experts(dense, llama, notes);
  REQUIRE(same.ok());
  CHECK(names_of(*same) == names_of(dense));
}

TEST_CASE("errors: unknown architecture, expert count or hidden size against config.json") {
  auto tensors = read_packed(kFixtures / "mixtral" / "packed.pt");
  std::vector<std::string> notes;

  HfConfig unknown = config_of("mixtral");
  unknown.top.model_type = "my_moe";
  auto error = unpack_packed_experts(tensors, unknown, notes);
  REQUIRE(!error.ok());
  CHECK(error.error().kind == ErrorKind::kUnsupported);
  CHECK(error.error().message.find("my_moe") != std::string::npos);
  CHECK(error.error().message.find("--keep-packed-experts") != std::string::npos);
  CHECK(error.error().message.find("experts.gate_up_proj") != std::string::npos);

  HfConfig renaming = config_of("mixtral");
  renaming.top.model_type = "deepseek_v4";
  error = unpack_packed_experts(tensors, renaming, notes);
  REQUIRE(!error.ok());
  CHECK(error.error().message.find("--keep-packed-experts") != std::string::npos);

  HfConfig five = config_of("mixtral");
  five.top.num_experts = 5;
  error = unpack_packed_experts(tensors, five, notes);
  REQUIRE(!error.ok());
  CHECK(error.error().kind == ErrorKind::kInvalidInput);
  CHECK(error.error().message.find("4 experts, config.json says 5") != std::string::npos);
  CHECK(error.error().message.find("config.json") != std::string::npos);

  HfConfig wide = config_of("mixtral");
  wide.top.hidden_size = 16;
  error = unpack_packed_experts(tensors, wide, notes);
  REQUIRE(!error.ok());
  CHECK(error.error().message.find("hidden_size 16") != std::string::npos);

  // A packed tensor of the wrong rank.
  auto flat = tensors;
  for (auto& t : flat)
    if (t.name.ends_with("experts.down_proj")) t = select(t, 0, 0);
  error = unpack_packed_experts(flat, config_of("mixtral"), notes);
  REQUIRE(!error.ok());
  CHECK(error.error().message.find("[experts, rows, columns]") != std::string::npos);
}
