// The reader side: every validation rule of the Rust reference reader, one malformed file each;
// every error names the file and, where there is one, the tensor. Also read_index.
#include <doctest/doctest.h>

#include <string>

#include "safetensors/safetensors.h"
#include "test_safetensors_testutil.h"

using namespace ckptstream;
using namespace ckptstream::safetensors;
using namespace ckptstream::safetensors::testing;

namespace {

// A file: the 8-byte length of `json`, `json`, then `data_size` bytes of data.
std::string safetensors_bytes(const std::string& json, std::size_t data_size) {
  return le64(json.size()) + json + std::string(data_size, '\x01');
}

Result<FileHeader> read_bytes_as_file(const TempDir& dir, const std::string& name,
                                      const std::string& bytes) {
  auto path = dir.write(name, bytes);
  auto file = InputFile::open(path);
  REQUIRE(file.ok());
  return read_header(*file);
}

// Reads `bytes` as a file named `name` and checks that it fails with all of `needles` in the
// message (the file name always among them).
void check_rejected(const TempDir& dir, const std::string& name, const std::string& bytes,
                    std::initializer_list<std::string> needles,
                    ErrorKind kind = ErrorKind::kInvalidInput) {
  CAPTURE(name);
  auto header = read_bytes_as_file(dir, name, bytes);
  REQUIRE(!header.ok());
  const std::string& message = header.error().message;
  CAPTURE(message);
  CHECK(header.error().kind == kind);
  CHECK(message.find((dir.path / name).string() + ": ") == 0);
  for (const auto& needle : needles) CHECK(message.find(needle) != std::string::npos);
}

const std::string kOneTensor = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

}  // namespace

TEST_CASE("the reader accepts what the format allows") {
  TempDir dir("accept");
  SUBCASE("leading and trailing whitespace, unknown fields, any key order, null metadata") {
    std::string json =
        " \n{\"b\":{\"data_offsets\":[8,10],\"shape\":[1],\"dtype\":\"BF16\",\"extra\":[1,{}]},"
        "\"__metadata__\":null,\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}\t\r "
        " ";
    auto header = read_bytes_as_file(dir, "lenient.safetensors", safetensors_bytes(json, 10));
    REQUIRE_MESSAGE(header.ok(), header.error().message);
    CHECK(header->metadata.empty());
    REQUIRE(header->tensors.size() == 2);
    CHECK(header->tensors[0].name == "a");  // sorted by data offsets
    CHECK(header->tensors[1].name == "b");
    CHECK(header->tensors[1].dtype == DType::kBF16);
    CHECK(header->data_start == 8 + json.size());
  }
  SUBCASE("dtypes without a torch save path here: C64, F8_E8M0, F8 FNUZ, U64") {
    std::string json =
        R"({"__metadata__":{"format":"pt","k":"v"},"c":{"dtype":"C64","shape":[1],"data_offsets":[0,8]},)"
        R"("e":{"dtype":"F8_E8M0","shape":[2],"data_offsets":[8,10]},)"
        R"("f":{"dtype":"F8_E4M3FNUZ","shape":[1],"data_offsets":[10,11]},)"
        R"("g":{"dtype":"F8_E5M2FNUZ","shape":[1],"data_offsets":[11,12]},)"
        R"("u":{"dtype":"U64","shape":[1],"data_offsets":[12,20]}})";
    auto header = read_bytes_as_file(dir, "dtypes.safetensors", safetensors_bytes(json, 20));
    REQUIRE_MESSAGE(header.ok(), header.error().message);
    CHECK(header->metadata.at("k") == "v");
    REQUIRE(header->tensors.size() == 5);
    CHECK(header->tensors[0].dtype == DType::kComplex64);
    CHECK(header->tensors[1].dtype == DType::kF8E8M0FNU);
    CHECK(header->tensors[2].dtype == DType::kF8E4M3FNUZ);
    CHECK(header->tensors[3].dtype == DType::kF8E5M2FNUZ);
    CHECK(header->tensors[4].dtype == DType::kU64);
  }
  SUBCASE("several empty tensors at the same offset, and a file with no tensor") {
    std::string json =
        R"({"e1":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"e2":{"dtype":"I8","shape":[3,0],"data_offsets":[0,0]}})";
    auto header = read_bytes_as_file(dir, "empties.safetensors", safetensors_bytes(json, 0));
    REQUIRE_MESSAGE(header.ok(), header.error().message);
    CHECK(header->tensors.size() == 2);
    auto none = read_bytes_as_file(dir, "none.safetensors", safetensors_bytes("{}", 0));
    REQUIRE_MESSAGE(none.ok(), none.error().message);
    CHECK(none->tensors.empty());
  }
}

TEST_CASE("the reader enforces every rule of the reference reader") {
  TempDir dir("reject");
  const std::string one = safetensors_bytes(kOneTensor, 8);

  SUBCASE("file shorter than 8 bytes") {
    check_rejected(dir, "tiny.safetensors", std::string("\x05\0\0", 3), {"3 bytes", "too short"});
    check_rejected(dir, "zero.safetensors", "", {"0 bytes"});
  }
  SUBCASE("header length over 100 MB") {
    check_rejected(dir, "large.safetensors", le64(100'000'001) + "{}",
                   {"header length 100000001 exceeds the limit of 100000000 bytes"});
  }
  SUBCASE("header-length bomb: fails at once, allocating nothing") {
    check_rejected(dir, "bomb.safetensors", le64(1ULL << 63) + "{}      ",
                   {"header length 9223372036854775808 exceeds the limit"});
    check_rejected(dir, "bomb2.safetensors", le64(~0ULL), {"exceeds the limit"});
  }
  SUBCASE("8 + N beyond the file") {
    check_rejected(dir, "short.safetensors", le64(1000) + kOneTensor,
                   {"header length 1000 runs past the end of the file (", ")"});
    check_rejected(dir, "short2.safetensors", le64(99'999'999) + "{}", {"runs past the end"});
  }
  SUBCASE("header not UTF-8") {
    std::string json = "{\"w\xff\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}";
    check_rejected(dir, "utf8.safetensors", safetensors_bytes(json, 0), {"not valid UTF-8"});
  }
  SUBCASE("header not JSON, or not the expected shape") {
    check_rejected(dir, "json.safetensors", safetensors_bytes("{\"w\":", 0), {"not valid JSON"});
    check_rejected(dir, "json2.safetensors", safetensors_bytes(kOneTensor + "}", 8),
                   {"not valid JSON"});
    check_rejected(dir, "empty_header.safetensors", safetensors_bytes("", 0), {"not valid JSON"});
    check_rejected(dir, "array.safetensors", safetensors_bytes("[]", 0), {"not a JSON object"});
    check_rejected(dir, "entry.safetensors", safetensors_bytes(R"({"w":[1]})", 0),
                   {"tensor 'w': entry is not a JSON object"});
    check_rejected(dir, "missing.safetensors",
                   safetensors_bytes(R"({"w":{"dtype":"F32","shape":[0]}})", 0),
                   {"tensor 'w': missing field 'data_offsets'"});
    check_rejected(
        dir, "three.safetensors",
        safetensors_bytes(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0,0]}})", 0),
        {"tensor 'w': data_offsets must hold exactly 2 integers"});
    check_rejected(dir, "dtype_type.safetensors",
                   safetensors_bytes(R"({"w":{"dtype":5,"shape":[0],"data_offsets":[0,0]}})", 0),
                   {"tensor 'w': dtype is not a string"});
  }
  SUBCASE("__metadata__ must map strings to strings") {
    std::string json =
        R"({"__metadata__":{"format":"pt","n":1},"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})";
    check_rejected(dir, "meta.safetensors", safetensors_bytes(json, 0),
                   {"__metadata__ must map strings to strings", "'n'"});
    check_rejected(dir, "meta2.safetensors", safetensors_bytes(R"({"__metadata__":"pt"})", 0),
                   {"__metadata__ must be an object"});
  }
  SUBCASE("unknown dtype") {
    check_rejected(dir, "dtype.safetensors",
                   safetensors_bytes(R"({"w":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}})", 8),
                   {"tensor 'w': unknown dtype 'F7'"});
    check_rejected(
        dir, "f6.safetensors",
        safetensors_bytes(R"({"w":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}})", 3),
        {"tensor 'w': dtype F6_E2M3 is not supported"}, ErrorKind::kUnsupported);
  }
  SUBCASE("shape entries must be non-negative integers") {
    for (const char* shape : {"[-1]", "[1.0]", "[\"2\"]", "[1e3]", "7"}) {
      CAPTURE(shape);
      std::string json =
          std::string(R"({"w":{"dtype":"F32","shape":)") + shape + R"(,"data_offsets":[0,8]}})";
      check_rejected(dir, "shape.safetensors", safetensors_bytes(json, 8),
                     {"tensor 'w': shape", "non-negative integers"});
    }
    // simdjson 3.0 rejects integers beyond 64 bits while parsing (serde, while typing).
    check_rejected(
        dir, "bigint.safetensors",
        safetensors_bytes(
            R"({"w":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}})", 8),
        {"header is not valid JSON"});
    check_rejected(
        dir, "offsets.safetensors",
        safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
        {"tensor 'w': data_offsets entries must be non-negative integers"});
  }
  SUBCASE("holes and overlaps after sorting by offsets") {
    check_rejected(
        dir, "first.safetensors",
        safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
        {"tensor 'w': data_offsets [4, 12] leave a hole: the data buffer starts at 0"});
    std::string hole =
        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
    check_rejected(
        dir, "hole.safetensors", safetensors_bytes(hole, 12),
        {"tensor 'b': data_offsets [8, 12] leave a hole: the previous tensor ends at 4"});
    std::string overlap =
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
    check_rejected(
        dir, "overlap.safetensors", safetensors_bytes(overlap, 8),
        {"tensor 'b': data_offsets [4, 8] leave an overlap: the previous tensor ends at 8"});
  }
  SUBCASE("END < BEGIN") {
    check_rejected(
        dir, "reversed.safetensors",
        safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
        {"tensor 'w': data_offsets [8, 0] end before they begin"});
  }
  SUBCASE("numel x bits overflow") {
    check_rejected(
        dir, "overflow.safetensors",
        safetensors_bytes(
            R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
        {"tensor 'w': shape [4294967296, 4294967296] overflows"});
    check_rejected(
        dir, "overflow2.safetensors",
        safetensors_bytes(
            R"({"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})", 8),
        {"tensor 'w':", "overflows"});
  }
  SUBCASE("size different from numel x element size") {
    check_rejected(
        dir, "size.safetensors",
        safetensors_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
        {"tensor 'w': data_offsets [0, 8] hold 8 bytes but shape [3] of F32 needs 12"});
    check_rejected(dir, "f4bits.safetensors",
                   safetensors_bytes(R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2),
                   {"tensor 'w': shape [3] of F4 does not fill a whole number of bytes"});
    check_rejected(dir, "f4size.safetensors",
                   safetensors_bytes(R"({"w":{"dtype":"F4","shape":[4],"data_offsets":[0,4]}})", 4),
                   {"tensor 'w': data_offsets [0, 4] hold 4 bytes but shape [4] of F4 needs 2"});
    check_rejected(
        dir, "f4odd.safetensors",
        safetensors_bytes(R"({"w":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}})", 3),
        {"tensor 'w': F4 shape [2, 3]", "last dimension must be even"}, ErrorKind::kUnsupported);
  }
  SUBCASE("trailing bytes, or a data buffer cut short") {
    check_rejected(dir, "trailing.safetensors", one + "xyz",
                   {"3 trailing bytes after the last tensor"});
    check_rejected(dir, "cut.safetensors", one.substr(0, one.size() - 1),
                   {"incomplete data buffer: the tensors need 8 bytes", "holds 7"});
  }
  SUBCASE("duplicate names") {
    std::string json =
        R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
    check_rejected(dir, "dup.safetensors", safetensors_bytes(json, 8),
                   {"duplicate tensor name 'w'"});
    std::string field = R"({"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})";
    check_rejected(dir, "dupfield.safetensors", safetensors_bytes(field, 4),
                   {"tensor 'w': duplicate field 'dtype'"});
  }
}

TEST_CASE("read_index returns total_size and the weight map in file order") {
  TempDir dir("index");
  auto path = dir.write("model.safetensors.index.json",
                        R"({"metadata": {"total_size": 1234, "format": "pt"},
                            "weight_map": {"b": "model-00002-of-00002.safetensors",
                                           "a": "model-00001-of-00002.safetensors",
                                           "\u00e9": "sub/model-00001-of-00002.safetensors"}})");
  auto index = read_index(path);
  REQUIRE_MESSAGE(index.ok(), index.error().message);
  CHECK(index->total_size == 1234);
  REQUIRE(index->weight_map.size() == 3);
  CHECK(index->weight_map[0].first == "b");
  CHECK(index->weight_map[1].second == "model-00001-of-00002.safetensors");
  CHECK(index->weight_map[2].first == "\xc3\xa9");

  auto floats =
      read_index(dir.write("f.json", R"({"metadata":{"total_size":1.2e3},"weight_map":{}})"));
  REQUIRE_MESSAGE(floats.ok(), floats.error().message);
  CHECK(floats->total_size == 1200);
  auto bare = read_index(dir.write("bare.json", R"({"weight_map":{"a":"x.safetensors"}})"));
  REQUIRE_MESSAGE(bare.ok(), bare.error().message);
  CHECK(bare->total_size == 0);

  struct Bad {
    const char* json;
    const char* needle;
  };
  for (const Bad& bad : {Bad{"{", "not valid JSON"}, Bad{"[]", "not a JSON object"},
                         Bad{R"({"metadata":{}})", "missing \"weight_map\""},
                         Bad{R"({"weight_map":[]})", "\"weight_map\" is not an object"},
                         Bad{R"({"metadata":{"total_size":-1},"weight_map":{}})", "total_size"},
                         Bad{R"({"metadata":{"total_size":1.5},"weight_map":{}})", "total_size"},
                         Bad{R"({"metadata":[],"weight_map":{}})", "\"metadata\" is not an object"},
                         Bad{R"({"weight_map":{"a":1}})", "tensor 'a' does not map to a string"},
                         Bad{R"({"weight_map":{"a":"x","a":"y"}})", "duplicate tensor 'a'"},
                         Bad{R"({"weight_map":{"a":"../x.safetensors"}})", "not a file inside"},
                         Bad{R"({"weight_map":{"a":"/etc/x"}})", "not a file inside"}}) {
    CAPTURE(bad.json);
    auto bad_path = dir.write("bad.index.json", bad.json);
    auto result = read_index(bad_path);
    REQUIRE(!result.ok());
    CHECK(result.error().message.find(bad_path.string() + ": ") == 0);
    CHECK(result.error().message.find(bad.needle) != std::string::npos);
  }
  auto missing = read_index(dir.path / "absent.json");
  REQUIRE(!missing.ok());
  CHECK(missing.error().kind == ErrorKind::kIo);
}
