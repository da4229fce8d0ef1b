// The writer side: byte-identical headers and index files against files written by the real
// safetensors (tests/fixtures/safetensors, tools/fixtures/make_safetensors_fixtures.py),
// huggingface_hub's shard split, and parse_size.
#include <doctest/doctest.h>
#include <simdjson.h>

#include <filesystem>
#include <string>
#include <vector>

#include "safetensors/safetensors.h"
#include "test_safetensors_testutil.h"

using namespace ckptstream;
using namespace ckptstream::safetensors;
using namespace ckptstream::safetensors::testing;

namespace {

const std::filesystem::path kFixtures = std::filesystem::path(CKPT_FIXTURES) / "safetensors";

// The input a fixture was written from: tensors in dict order, plus the optional sharding keys.
struct Description {
  std::vector<LogicalTensor> tensors;
  std::uint64_t max_shard_size = kDefaultMaxShardSize;
  std::vector<std::vector<std::string>> files;
};

Description load_description(const std::filesystem::path& path) {
  Description description;
  simdjson::dom::parser parser;
  simdjson::padded_string json = simdjson::padded_string::load(path.string());
  simdjson::dom::element root = parser.parse(json);
  for (simdjson::dom::object entry : root["tensors"].get_array()) {
    std::string_view code = entry["dtype"];
    auto dtype = dtype_from_safetensors_name(code);
    REQUIRE(dtype.has_value());
    Shape shape;
    for (std::int64_t dim : entry["shape"].get_array()) shape.push_back(dim);
    description.tensors.push_back(
        tensor(std::string(std::string_view(entry["name"])), *dtype, shape));
  }
  std::uint64_t max_size = 0;
  if (root["max_shard_size"].get(max_size) == simdjson::SUCCESS)
    description.max_shard_size = max_size;
  simdjson::dom::array files;
  if (root["files"].get(files) == simdjson::SUCCESS) {
    for (simdjson::dom::array names : files) {
      description.files.emplace_back();
      for (std::string_view name : names) description.files.back().emplace_back(name);
    }
  }
  return description;
}

// Compares our plan of one output file with a file written by the reference writer.
void check_file_matches(const OutputFile& ours, const std::filesystem::path& reference) {
  INFO("reference file: " << reference.string());
  std::string bytes = read_bytes(reference);
  REQUIRE(bytes.size() >= ours.header.size());
  CHECK(bytes.substr(0, ours.header.size()) == ours.header);
  CHECK(ours.size() == bytes.size());

  auto file = InputFile::open(reference);
  REQUIRE(file.ok());
  auto header = read_header(*file);
  REQUIRE_MESSAGE(header.ok(), header.error().message);
  CHECK(header->data_start == ours.header.size());
  CHECK(header->metadata == std::map<std::string, std::string>{{"format", "pt"}});
  REQUIRE(header->tensors.size() == ours.tensors.size());
  for (std::size_t i = 0; i < ours.tensors.size(); ++i) {
    const auto& read = header->tensors[i];
    const auto& placed = ours.tensors[i];
    CHECK(read.name == placed.tensor.name);
    CHECK(read.dtype == placed.tensor.dtype);
    CHECK(read.shape == placed.tensor.shape);
    CHECK(read.data_begin == placed.data_begin);
    CHECK(read.data_end == placed.data_end);
  }
}

std::vector<std::vector<std::string>> file_names(const Plan& plan) {
  std::vector<std::vector<std::string>> files;
  for (const auto& file : plan.files) {
    files.emplace_back();
    for (const auto& placed : file.tensors) files.back().push_back(placed.tensor.name);
  }
  return files;
}

Plan plan_or_fail(std::vector<LogicalTensor> tensors, std::uint64_t max_shard_size) {
  Plan plan;
  auto status = plan_output(std::move(tensors), OutputOptions{max_shard_size}, plan);
  REQUIRE_MESSAGE(status.ok(), status.error().message);
  return plan;
}

}  // namespace

TEST_CASE("single-file headers are byte-identical to safetensors.torch.save_file") {
  for (const char* stem : {"mixed", "empty", "single", "unsigned"}) {
    CAPTURE(stem);
    auto description = load_description(kFixtures / (std::string(stem) + ".json"));
    std::uint64_t expected_total = 0;
    for (const auto& t : description.tensors) expected_total += nbytes(t);
    Plan plan = plan_or_fail(description.tensors, kDefaultMaxShardSize);
    REQUIRE(plan.files.size() == 1);
    CHECK(plan.files[0].name == "model.safetensors");
    CHECK(plan.index_json.empty());
    CHECK(plan.total_size == expected_total);
    check_file_matches(plan.files[0], kFixtures / (std::string(stem) + ".safetensors"));
  }
}

TEST_CASE("sharded output matches huggingface_hub's split, save_file's shards and the index") {
  auto description = load_description(kFixtures / "sharded" / "input.json");
  Plan plan = plan_or_fail(description.tensors, description.max_shard_size);
  REQUIRE(plan.files.size() == description.files.size());
  for (std::size_t i = 0; i < plan.files.size(); ++i) {
    CAPTURE(i);
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, plan.files.size());
    CHECK(plan.files[i].name == name);
    // Same tensors (the file order is the writer's dtype/name order, checked byte for byte).
    auto ours = file_names(plan)[i];
    auto expected = description.files[i];
    std::sort(ours.begin(), ours.end());
    std::sort(expected.begin(), expected.end());
    CHECK(ours == expected);
    check_file_matches(plan.files[i], kFixtures / "sharded" / name);
  }
  CHECK(plan.total_size == 561);
  CHECK(plan.index_json == read_bytes(kFixtures / "sharded" / kIndexFileName));

  auto index = read_index(kFixtures / "sharded" / kIndexFileName);
  REQUIRE_MESSAGE(index.ok(), index.error().message);
  CHECK(index->total_size == 561);
  REQUIRE(index->weight_map.size() == 8);
  CHECK(index->weight_map.front() ==
        std::pair<std::string, std::string>("Big2", "model-00003-of-00005.safetensors"));
  CHECK(index->weight_map.back().first == "\xc3\xbcn\xc3\xaf.norm");  // file order (sorted keys)
}

TEST_CASE("greedy split: limits, tensors larger than the limit, zero-size tensors") {
  const DType u8 = DType::kU8;
  SUBCASE("exactly at the limit stays in one file, one byte more starts a new one") {
    Plan one = plan_or_fail({tensor("a", u8, {50}), tensor("b", u8, {50})}, 100);
    CHECK(file_names(one) == std::vector<std::vector<std::string>>{{"a", "b"}});
    CHECK(one.files[0].name == "model.safetensors");
    CHECK(one.index_json.empty());
    Plan two =
        plan_or_fail({tensor("a", u8, {50}), tensor("b", u8, {50}), tensor("c", u8, {1})}, 100);
    CHECK(file_names(two) == std::vector<std::vector<std::string>>{{"a", "b"}, {"c"}});
    CHECK(two.files[1].name == "model-00002-of-00002.safetensors");
    CHECK(!two.index_json.empty());
  }
  SUBCASE("a tensor larger than the limit first") {
    Plan plan =
        plan_or_fail({tensor("big", u8, {200}), tensor("a", u8, {10}), tensor("b", u8, {10})}, 100);
    CHECK(file_names(plan) == std::vector<std::vector<std::string>>{{"big"}, {"a", "b"}});
  }
  SUBCASE("a tensor larger than the limit in the middle is filed before the open shard") {
    Plan plan =
        plan_or_fail({tensor("a", u8, {60}), tensor("big", u8, {200}), tensor("b", u8, {60})}, 100);
    CHECK(file_names(plan) == std::vector<std::vector<std::string>>{{"big"}, {"a"}, {"b"}});
    Plan small =
        plan_or_fail({tensor("a", u8, {10}), tensor("big", u8, {200}), tensor("b", u8, {10})}, 100);
    CHECK(file_names(small) == std::vector<std::vector<std::string>>{{"big"}, {"a", "b"}});
  }
  SUBCASE("many small tensors") {
    std::vector<LogicalTensor> tensors;
    for (int i = 0; i < 10; ++i) tensors.push_back(tensor("t" + std::to_string(i), u8, {30}));
    Plan plan = plan_or_fail(tensors, 100);
    CHECK(file_names(plan) ==
          std::vector<std::vector<std::string>>{
              {"t0", "t1", "t2"}, {"t3", "t4", "t5"}, {"t6", "t7", "t8"}, {"t9"}});
    CHECK(plan.files[3].name == "model-00004-of-00004.safetensors");
    CHECK(plan.total_size == 300);
  }
  SUBCASE("zero-size tensors join the current shard, even with a limit of 0") {
    Plan plan = plan_or_fail({tensor("a", u8, {3}), tensor("b", u8, {0})}, 0);
    CHECK(file_names(plan) == std::vector<std::vector<std::string>>{{"a"}, {"b"}});
  }
  SUBCASE("no tensor at all: one empty model.safetensors") {
    Plan plan = plan_or_fail({}, 100);
    REQUIRE(plan.files.size() == 1);
    CHECK(plan.files[0].name == "model.safetensors");
    CHECK(plan.files[0].header == le64(32) + R"({"__metadata__":{"format":"pt"}})");
    CHECK(plan.total_size == 0);
  }
}

TEST_CASE("within a file: dtype descending, then name bytewise, packed back to back") {
  Plan plan = plan_or_fail({tensor("b", DType::kF16, {3}), tensor("a", DType::kU8, {1}),
                            tensor("Z", DType::kF16, {1}), tensor("c", DType::kF64, {1}),
                            tensor("_", DType::kF16, {2}), tensor("x", DType::kComplex64, {1})},
                           kDefaultMaxShardSize);
  REQUIRE(plan.files.size() == 1);
  CHECK(file_names(plan)[0] == std::vector<std::string>{"c", "x", "Z", "_", "b", "a"});
  const auto& placed = plan.files[0].tensors;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> offsets;
  for (const auto& p : placed) offsets.emplace_back(p.data_begin, p.data_end);
  CHECK(offsets == std::vector<std::pair<std::uint64_t, std::uint64_t>>{
                       {0, 8}, {8, 16}, {16, 18}, {18, 22}, {22, 28}, {28, 29}});
}

TEST_CASE("F4 headers record the logical shape (last dimension doubled)") {
  Plan plan = plan_or_fail({tensor("w", DType::kF4E2M1FNx2, {2, 3})}, kDefaultMaxShardSize);
  REQUIRE(plan.files.size() == 1);
  const std::string json =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F4","shape":[2,6],"data_offsets":[0,6]}})";
  std::string padded = json + std::string((8 - json.size() % 8) % 8, ' ');
  CHECK(plan.files[0].header == le64(padded.size()) + padded);
  CHECK(plan.total_size == 6);

  // What we write, we read back with the torch shape.
  TempDir dir("f4");
  auto path = dir.write("f4.safetensors", plan.files[0].header + std::string(6, '\x22'));
  auto file = InputFile::open(path);
  REQUIRE(file.ok());
  auto header = read_header(*file);
  REQUIRE_MESSAGE(header.ok(), header.error().message);
  REQUIRE(header->tensors.size() == 1);
  CHECK(header->tensors[0].dtype == DType::kF4E2M1FNx2);
  CHECK(header->tensors[0].shape == Shape{2, 3});

  Plan bad;
  auto status = plan_output({tensor("s", DType::kF4E2M1FNx2, {})}, OutputOptions{}, bad);
  REQUIRE(!status.ok());
  CHECK(status.error().message.find("'s'") != std::string::npos);
}

TEST_CASE("plan_output rejects what safetensors cannot hold") {
  Plan plan;
  auto dup = plan_output(
      {tensor("w", DType::kF32, {1}), tensor("v", DType::kF32, {1}), tensor("w", DType::kF16, {2})},
      OutputOptions{}, plan);
  REQUIRE(!dup.ok());
  CHECK(dup.error().message.find("duplicate tensor name 'w'") != std::string::npos);

  auto complex128 = plan_output({tensor("z", DType::kComplex128, {1})}, OutputOptions{}, plan);
  REQUIRE(!complex128.ok());
  CHECK(complex128.error().kind == ErrorKind::kUnsupported);
  CHECK(complex128.error().message.find("'z': dtype complex128 has no safetensors code") !=
        std::string::npos);

  auto negative = plan_output({tensor("n", DType::kF32, {2, -1})}, OutputOptions{}, plan);
  REQUIRE(!negative.ok());
  CHECK(negative.error().message.find("'n': negative dimension") != std::string::npos);

  auto overflow =
      plan_output({tensor("o", DType::kF64, {1LL << 40, 1LL << 30})}, OutputOptions{}, plan);
  REQUIRE(!overflow.ok());
  CHECK(overflow.error().message.find("'o'") != std::string::npos);

  auto bad_utf8 = plan_output({tensor("bad\xff", DType::kF32, {1})}, OutputOptions{}, plan);
  REQUIRE(!bad_utf8.ok());
  CHECK(bad_utf8.error().message.find("not valid UTF-8") != std::string::npos);

  // A state-dict key "__metadata__" would give the header that key twice.
  auto metadata = plan_output({tensor("__metadata__", DType::kF32, {1})}, OutputOptions{}, plan);
  REQUIRE(!metadata.ok());
  CHECK(metadata.error().message.find("'__metadata__': safetensors reserves this name") !=
        std::string::npos);

  // One name long enough to push the header over safetensors' 100 MB limit.
  auto huge = plan_output({tensor(std::string(kMaxHeaderSize, 'n'), DType::kU8, {1})},
                          OutputOptions{}, plan);
  REQUIRE(!huge.ok());
  CHECK(huge.error().message.find("model.safetensors: its header would be") != std::string::npos);
  CHECK(huge.error().message.find("100000000") != std::string::npos);
}

TEST_CASE("index JSON escapes like Python's json.dumps(indent=2, sort_keys=True)") {
  // Expected bytes printed by CPython 3 json.dumps for the same weight map.
  const std::string expected =
      "{\n  \"metadata\": {\n    \"total_size\": 12\n  },\n  \"weight_map\": {\n"
      "    \"Z\": \"model-00001-of-00002.safetensors\",\n"
      "    \"a\\\"q\": \"model-00001-of-00002.safetensors\",\n"
      "    \"ctl\\u0001\\u001f\\u007f\": \"model-00002-of-00002.safetensors\",\n"
      "    \"emoji\\ud83d\\ude00\": \"model-00001-of-00002.safetensors\",\n"
      "    \"tab\\t\\\\/\": \"model-00002-of-00002.safetensors\",\n"
      "    \"\\u00e9\": \"model-00002-of-00002.safetensors\"\n  }\n}\n";
  const DType u8 = DType::kU8;
  Plan plan =
      plan_or_fail({tensor("Z", u8, {2}), tensor("a\"q", u8, {2}),
                    tensor("emoji\xf0\x9f\x98\x80", u8, {2}), tensor("ctl\x01\x1f\x7f", u8, {2}),
                    tensor("tab\t\\/", u8, {2}), tensor("\xc3\xa9", u8, {2})},
                   6);
  REQUIRE(plan.files.size() == 2);
  CHECK(plan.index_json == expected);

  // serde_json's rules in the header: short escapes, \u00xx for other controls, raw 0x7F and UTF-8.
  CHECK(plan.files[1].header.find(R"("ctl\u0001\u001f)"
                                  "\x7f\"") != std::string::npos);
  CHECK(plan.files[1].header.find(R"("tab\t\\/")") != std::string::npos);
  CHECK(plan.files[1].header.find("\"\xc3\xa9\"") != std::string::npos);
}

TEST_CASE("parse_size reads huggingface_hub sizes and binary units") {
  auto ok = [](std::string_view text) {
    auto size = parse_size(text);
    REQUIRE_MESSAGE(size.ok(), size.error().message);
    return *size;
  };
  CHECK(ok("5GB") == 5'000'000'000ULL);
  CHECK(ok("5gb") == 5'000'000'000ULL);
  CHECK(ok("5GiB") == 5ULL << 30);
  CHECK(ok("5gib") == 5ULL << 30);
  CHECK(ok("500MB") == 500'000'000ULL);
  CHECK(ok("100KB") == 100'000ULL);
  CHECK(ok("100kib") == 102'400ULL);
  CHECK(ok("1TB") == 1'000'000'000'000ULL);
  CHECK(ok("2TiB") == 2ULL << 40);
  CHECK(ok("3MiB") == 3ULL << 20);
  CHECK(ok("1000") == 1000);
  CHECK(ok("0") == 0);
  CHECK(ok("1000B") == 1000);
  CHECK(ok(" 2 GB ") == 2'000'000'000ULL);
  CHECK(ok("1.5GB") == 1'500'000'000ULL);
  CHECK(ok("0.1GB") == 100'000'000ULL);
  CHECK(ok("2.01KB") == 2009);  // int(float("2.01") * 10**3), as huggingface_hub computes it
  CHECK(ok("18446744073709551615") == 18446744073709551615ULL);
  for (const char* bad :
       {"", "GB", "5XB", "5G", "-5GB", "5 G B", "1e3GB", "1.2.3GB", "abc", "18446744073709551616",
        "20000000TB", "1e400", "99999999999999999999.5GB", ".", "5GB5"}) {
    CAPTURE(bad);
    auto size = parse_size(bad);
    REQUIRE(!size.ok());
    CHECK(size.error().kind == ErrorKind::kUsage);
    CHECK(size.error().message.find("invalid size '" + std::string(bad) + "'") !=
          std::string::npos);
  }
  // A largest file of no bytes cannot hold anything: refused as a shard size.
  for (const char* nothing : {"0", "0GB", "0.0001KB"}) {
    CAPTURE(nothing);
    auto size = parse_max_shard_size(nothing);
    REQUIRE(!size.ok());
    CHECK(size.error().kind == ErrorKind::kUsage);
    CHECK(size.error().message.find("at least 1 byte") != std::string::npos);
  }
  CHECK(parse_max_shard_size("1").value() == 1);
}
