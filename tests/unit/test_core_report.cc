// `plan --dry-run` reports: exact text and JSON for a small hand-made plan, the detail levels,
// JSON that a real parser accepts (python3, when the host has it), and linear cost on a plan of
// 200k fragments.
#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "plan/report.h"

using namespace ckptstream;
namespace fs = std::filesystem;

namespace {

Fragment fragment(std::size_t input, std::uint64_t storage_begin, DType dtype, Shape shape,
                  Shape strides, std::int64_t offset, Shape at, bool byteswap = false) {
  Fragment f;
  f.source.input = input;
  f.source.storage_begin = storage_begin;
  f.source.storage_nbytes = 1 << 20;
  f.source.dtype = dtype;
  f.source.shape = std::move(shape);
  f.source.strides = std::move(strides);
  f.source.offset = offset;
  f.source.byteswap = byteswap;
  f.offsets = std::move(at);
  return f;
}

LogicalTensor logical(std::string name, DType source, DType written, Shape shape) {
  LogicalTensor t;
  t.name = std::move(name);
  t.source_dtype = source;
  t.dtype = written;
  t.shape = std::move(shape);
  return t;
}

// One file, two tensors: a (bf16 from f32, one plain and one transposed byteswapped fragment),
// b (f32, with a fused LoRA delta); a side file that does not exist (0 bytes) and an index.
Plan small_plan() {
  Plan plan;
  plan.inputs = {"in/r0.bin", "in/r1.bin", "in/a.bin", "in/b.bin"};
  auto a = logical("a", DType::kF32, DType::kBF16, {4, 2});
  a.fragments.push_back(fragment(0, 0, DType::kF32, {2, 2}, {2, 1}, 16, {0, 0}));
  a.fragments.push_back(fragment(1, 8, DType::kF32, {2, 2}, {1, 4}, 0, {2, 0}, true));
  auto b = logical("b", DType::kF32, DType::kF32, {3});
  b.fragments.push_back(fragment(0, 0, DType::kF32, {3}, {1}, 0, {0}));
  auto lora = std::make_shared<LoraDelta>();
  lora->a = logical("b.lora_A", DType::kF32, DType::kF32, {1, 3});
  lora->a.fragments.push_back(fragment(2, 0, DType::kF32, {1, 3}, {3, 1}, 0, {0, 0}));
  lora->b = logical("b.lora_B", DType::kF32, DType::kF32, {3, 1});
  lora->b.fragments.push_back(fragment(3, 0, DType::kF32, {3, 1}, {1, 1}, 0, {0, 0}));
  lora->scale = 0.5;
  b.lora = lora;

  OutputFile file;
  file.name = "model.safetensors";
  file.header = std::string(120, ' ');
  file.tensors.push_back(PlacedTensor{a, 0, 16});
  file.tensors.push_back(PlacedTensor{b, 16, 28});
  plan.files.push_back(file);
  plan.side_files.push_back(SideFile{"/nonexistent/ckptstream/config.json", "config.json"});
  plan.index_json = std::string(300, 'x');
  plan.total_size = 28;
  return plan;
}

// True when python3 is there and `json.load` accepts `text`; skipped (true) without python3.
bool python_accepts_json(const std::string& text) {
  if (std::system("python3 -c 'pass' >/dev/null 2>&1") != 0) return true;
  std::string pattern = (fs::temp_directory_path() / "ckpt_test_report_XXXXXX").string();
  int fd = ::mkstemp(pattern.data());
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(pattern, std::ios::binary) << text;
  int status = std::system(("python3 -m json.tool '" + pattern + "' >/dev/null").c_str());
  fs::remove(pattern);
  return status == 0;
}

}  // namespace

TEST_CASE("text report: one line per tensor, fragments below, totals") {
  PlanSummaryOptions options;
  options.memory_window = 16ull << 20;
  CHECK(plan_to_text(small_plan(), options) ==
        "file model.safetensors: 148 bytes (header 120), 2 tensors\n"
        "  a BF16 [4, 2] bytes [120, 136) from F32\n"
        "    <- in/r0.bin @64 +16 [2, 2] at [0, 0]\n"
        "    <- in/r1.bin @8 +24 [2, 2] strides [1, 4] at [2, 0] byteswap\n"
        "  b F32 [3] bytes [136, 148)\n"
        "    <- in/r0.bin @0 +12 [3] at [0]\n"
        "    lora scale 0.5 A F32 [1, 3] B F32 [3, 1]\n"
        "      A <- in/a.bin @0 +12 [1, 3] at [0, 0]\n"
        "      B <- in/b.bin @0 +12 [3, 1] at [0, 0]\n"
        "side config.json <- /nonexistent/ckptstream/config.json (0 bytes)\n"
        "index model.safetensors.index.json (300 bytes)\n"
        "total: 1 file, 2 tensors, 5 fragments; read 68 bytes (68 B); write 448 bytes (448 B); "
        "memory window 16777216 bytes (16 MiB)\n");

  options.detail = PlanSummaryOptions::Detail::kTensors;
  auto tensors = plan_to_text(small_plan(), options);
  CHECK(tensors.find("    <- ") == std::string::npos);
  CHECK(tensors.find("lora") == std::string::npos);
  CHECK(tensors.find("  b F32 [3] bytes [136, 148)\n") != std::string::npos);

  options.detail = PlanSummaryOptions::Detail::kFiles;
  auto files = plan_to_text(small_plan(), options);
  CHECK(files.find("  a ") == std::string::npos);
  CHECK(files.find("file model.safetensors: 148 bytes (header 120), 2 tensors\n") == 0);
}

TEST_CASE("streamed reports are the same bytes, handed out one output file at a time") {
  Plan plan = small_plan();
  plan.files.push_back(plan.files.front());
  plan.files.back().name = "model-2.safetensors";
  for (auto detail : {PlanSummaryOptions::Detail::kFragments, PlanSummaryOptions::Detail::kFiles}) {
    PlanSummaryOptions options;
    options.detail = detail;
    std::vector<std::string> parts;
    auto sink = [&](std::string_view part) { parts.emplace_back(part); };
    write_plan_text(plan, options, sink);
    CHECK(parts.size() == 3);  // a part per file, then side files, index and totals
    std::string joined;
    for (const auto& part : parts) joined += part;
    CHECK(joined == plan_to_text(plan, options));
    parts.clear();
    write_plan_json(plan, options, sink);
    CHECK(parts.size() == 3);
    joined.clear();
    for (const auto& part : parts) joined += part;
    CHECK(joined == plan_to_json(plan, options));
  }
}

TEST_CASE("JSON report: documented schema, exact bytes, parses") {
  PlanSummaryOptions options;
  options.memory_window = 1 << 20;
  auto json = plan_to_json(small_plan(), options);
  CHECK(json ==
        "{\"schema\":\"ckptstream.plan/1\",\n"
        "\"inputs\":[\"in/r0.bin\",\"in/r1.bin\",\"in/a.bin\",\"in/b.bin\"],\n"
        "\"files\":[\n"
        "{\"name\":\"model.safetensors\",\"size\":148,\"header_bytes\":120,\"tensors\":[\n"
        " {\"name\":\"a\",\"dtype\":\"BF16\",\"source_dtype\":\"F32\",\"shape\":[4,2],"
        "\"begin\":120,\"end\":136,\"fragments\":["
        "{\"input\":0,\"offset\":64,\"length\":16,\"shape\":[2,2],\"at\":[0,0]},"
        "{\"input\":1,\"offset\":8,\"length\":24,\"shape\":[2,2],\"strides\":[1,4],\"at\":[2,0],"
        "\"byteswap\":true}]},\n"
        " {\"name\":\"b\",\"dtype\":\"F32\",\"source_dtype\":\"F32\",\"shape\":[3],"
        "\"begin\":136,\"end\":148,\"fragments\":[{\"input\":0,\"offset\":0,\"length\":12,"
        "\"shape\":[3],\"at\":[0]}],"
        "\"lora\":{\"scale\":0.5,"
        "\"a\":{\"dtype\":\"F32\",\"source_dtype\":\"F32\",\"shape\":[1,3],\"fragments\":["
        "{\"input\":2,\"offset\":0,\"length\":12,\"shape\":[1,3],\"at\":[0,0]}]},"
        "\"b\":{\"dtype\":\"F32\",\"source_dtype\":\"F32\",\"shape\":[3,1],\"fragments\":["
        "{\"input\":3,\"offset\":0,\"length\":12,\"shape\":[3,1],\"at\":[0,0]}]}}}]}],\n"
        "\"side_files\":[{\"name\":\"config.json\",\"source\":"
        "\"/nonexistent/ckptstream/config.json\",\"size\":0}],\n"
        "\"index\":{\"name\":\"model.safetensors.index.json\",\"size\":300},\n"
        "\"totals\":{\"files\":1,\"tensors\":2,\"fragments\":5,\"bytes_read\":68,"
        "\"bytes_written\":448,\"tensor_bytes\":28,\"memory_window\":1048576}}\n");
  CHECK(python_accepts_json(json));

  options.detail = PlanSummaryOptions::Detail::kTensors;
  auto tensors = plan_to_json(small_plan(), options);
  CHECK(tensors.find("\"fragments\":[") == std::string::npos);
  CHECK(tensors.find("\"lora\":{\"scale\":0.5,\"a\":{\"dtype\":\"F32\",\"source_dtype\":\"F32\","
                     "\"shape\":[1,3]},") != std::string::npos);
  CHECK(python_accepts_json(tensors));

  options.detail = PlanSummaryOptions::Detail::kFiles;
  auto files = plan_to_json(small_plan(), options);
  CHECK(files.find("\"tensors\":[") == std::string::npos);
  CHECK(python_accepts_json(files));
}

TEST_CASE("empty plans, unsized side files, odd names and paths stay valid JSON") {
  Plan empty;
  auto json = plan_to_json(empty, {});
  CHECK(json.find("\"index\":null") != std::string::npos);
  CHECK(json.find("\"totals\":{\"files\":0,\"tensors\":0,\"fragments\":0,\"bytes_read\":0,"
                  "\"bytes_written\":0,") != std::string::npos);
  CHECK(python_accepts_json(json));
  CHECK(plan_to_text(empty, {}) ==
        "total: 0 files, 0 tensors, 0 fragments; read 0 bytes (0 B); write 0 bytes (0 B); "
        "memory window 0 bytes (0 B)\n");

  Plan odd = small_plan();
  odd.inputs[0] = std::string("in/\xff\"q\\.bin");  // not UTF-8
  odd.files[0].tensors[0].tensor.name = "na\"me\n\xc3\xa9";
  auto odd_json = plan_to_json(odd, {});
  CHECK(odd_json.find("\"in/\\u00ff\\\"q\\\\.bin\"") != std::string::npos);
  CHECK(odd_json.find("\"na\\\"me\\n\xc3\xa9\"") != std::string::npos);
  CHECK(python_accepts_json(odd_json));
}

TEST_CASE("side files are sized on disk; empty fragments read nothing") {
  std::string pattern = (fs::temp_directory_path() / "ckpt_test_report_XXXXXX").string();
  int fd = ::mkstemp(pattern.data());
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(pattern, std::ios::binary) << std::string(25, 'c');
  Plan plan = small_plan();
  plan.side_files[0].source = pattern;
  auto empty = fragment(0, 4, DType::kF32, {0, 2}, {2, 1}, 3, {4, 0});
  plan.files[0].tensors[0].tensor.fragments.push_back(empty);
  auto totals = plan_totals(plan);
  CHECK(totals.bytes_written == 148 + 300 + 25);
  CHECK(totals.bytes_read == 68);
  CHECK(totals.fragments == 6);
  CHECK(plan_to_text(plan, {}).find("    <- in/r0.bin @16 +0 [0, 2] at [4, 0]\n") !=
        std::string::npos);
  fs::remove(pattern);
}

TEST_CASE("human_bytes") {
  CHECK(human_bytes(0) == "0 B");
  CHECK(human_bytes(1023) == "1023 B");
  CHECK(human_bytes(1024) == "1 KiB");
  CHECK(human_bytes(1536) == "1.5 KiB");
  CHECK(human_bytes(16ull << 20) == "16 MiB");
  CHECK(human_bytes(1300ull << 30) == "1.3 TiB");
}

TEST_CASE("cost is linear: 20k tensors x 10 fragments") {
  Plan plan;
  plan.inputs = {"rank0.pt"};
  OutputFile file;
  file.name = "model.safetensors";
  file.header = std::string(64, ' ');
  std::uint64_t at = 0;
  for (int t = 0; t < 20000; ++t) {
    auto tensor = logical("model.layers." + std::to_string(t) + ".mlp.weight", DType::kF32,
                          DType::kBF16, {10, 4});
    for (int f = 0; f < 10; ++f)
      tensor.fragments.push_back(fragment(0, 1000, DType::kF32, {1, 4}, {4, 1}, f * 4, {f, 0}));
    file.tensors.push_back(PlacedTensor{std::move(tensor), at, at + 80});
    at += 80;
  }
  plan.files.push_back(std::move(file));
  auto start = std::chrono::steady_clock::now();
  auto json = plan_to_json(plan, {});
  auto text = plan_to_text(plan, {});
  auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds < 5.0);
  CHECK(json.size() > 200000 * 50);
  CHECK(text.size() > 200000 * 30);
  CHECK(json.find("\"bytes_read\":3200000,") != std::string::npos);
}

TEST_CASE("zero-fill fragments: no input, in both reports, and no bytes read") {
  Plan plan;
  plan.inputs = {"in/r0.bin"};
  auto padded = logical("embed", DType::kF32, DType::kF32, {6, 2});
  padded.fragments.push_back(fragment(0, 0, DType::kF32, {4, 2}, {2, 1}, 0, {0, 0}));
  Fragment pad;
  pad.source.zeros = true;
  pad.source.dtype = DType::kF32;
  pad.source.shape = {2, 2};
  pad.source.strides = {2, 1};
  pad.offsets = {4, 0};
  padded.fragments.push_back(pad);
  OutputFile file;
  file.name = "model.safetensors";
  file.header = std::string(8, ' ');
  file.tensors.push_back(PlacedTensor{padded, 0, 48});
  plan.files.push_back(file);
  plan.total_size = 48;
  PlanSummaryOptions options;
  std::string text = plan_to_text(plan, options);
  CHECK(text.find("    <- in/r0.bin @0 +32 [4, 2] at [0, 0]\n    <- zeros [2, 2] at [4, 0]\n") !=
        std::string::npos);
  std::string json = plan_to_json(plan, options);
  CHECK(json.find("\"fragments\":[{\"input\":0,\"offset\":0,\"length\":32,\"shape\":[4,2],"
                  "\"at\":[0,0]},{\"zeros\":true,\"shape\":[2,2],\"at\":[4,0]}]") !=
        std::string::npos);
  CHECK(python_accepts_json(json));
  CHECK(plan_totals(plan).bytes_read == 32);  // the zeros come from no file
}
