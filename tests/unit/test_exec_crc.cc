// Zip record CRC-32 checks while bytes stream through (exec/record_check.h): pieces in any order
// and overlapping, what no fragment reads completed at the end, and plans whose records are
// damaged failing before anything lands in the target, naming the file and both checksums.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/crc32.h"
#include "exec/executor.h"
#include "exec/record_check.h"
#include "io/input_file.h"
#include "plan_builders.h"
#include "temp_dir.h"

using namespace ckptstream;
using namespace ckptstream::testing;
namespace fs = std::filesystem;
using Bytes = std::vector<std::byte>;

namespace {

Bytes random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 random(seed);
  Bytes out(n);
  for (auto& b : out) b = static_cast<std::byte>(random() & 0xFF);
  return out;
}

std::uint32_t crc_of(const Bytes& bytes, std::size_t begin, std::size_t end) {
  return crc32_update(0, std::span(bytes).subspan(begin, end - begin));
}

// The record [begin, begin + size) of input 0, with the CRC its archive would record.
TensorRef record_view(std::uint64_t begin, std::uint64_t size, std::uint32_t crc, Shape shape,
                      Shape strides, std::int64_t offset = 0) {
  TensorRef ref;
  ref.storage_begin = begin;
  ref.storage_nbytes = size;
  ref.dtype = DType::kF32;
  ref.shape = std::move(shape);
  ref.strides = std::move(strides);
  ref.offset = offset;
  ref.has_crc32 = true;
  ref.crc32 = crc;
  return ref;
}

}  // namespace

TEST_CASE("pieces of a record, in any order and overlapping, are checked once they cover it") {
  TempDir dir("crc");
  Bytes file = random_bytes(10'000, 1);
  write_file(dir / "in.bin", file);
  auto input = InputFile::open(dir / "in.bin");
  REQUIRE(input.ok());
  std::vector<InputFile> inputs;
  inputs.push_back(std::move(input).value());
  const std::uint64_t begin = 1000, size = 6000;
  TensorRef ref = record_view(begin, size, crc_of(file, begin, begin + size), {1500}, {1});

  std::vector<std::pair<std::uint64_t, std::uint64_t>> cuts = {
      {3000, 4500}, {0, 1000}, {4500, 6000}, {1000, 2000}, {500, 1500}, {2000, 3000}};
  auto piece = [&](std::uint64_t from, std::uint64_t to) {
    return RecordPiece{from, to, crc_of(file, begin + from, begin + to)};
  };
  SUBCASE("covered by the pieces themselves") {
    RecordChecker checker(inputs);
    for (auto [from, to] : cuts) {
      RecordPiece p = piece(from, to);
      REQUIRE(checker.add(ref, std::span(&p, 1)).ok());
    }
    REQUIRE(checker.finish().ok());
    CHECK(checker.completion_bytes() == 0);
  }
  SUBCASE("what no piece covered is read at the end") {
    RecordChecker checker(inputs);
    RecordPiece some[] = {piece(100, 900), piece(2000, 5000)};
    REQUIRE(checker.add(ref, some).ok());
    REQUIRE(checker.finish().ok());
    CHECK(checker.completion_bytes() == 100 + 1100 + 1000);
  }
  SUBCASE("a damaged record is named with both checksums") {
    std::uint32_t wrong = ref.crc32 ^ 0x10u;
    TensorRef damaged = ref;
    damaged.crc32 = wrong;
    RecordChecker checker(inputs);
    RecordPiece first = piece(0, 4000), rest = piece(4000, 6000);
    REQUIRE(checker.add(damaged, std::span(&first, 1)).ok());
    auto failed = checker.add(damaged, std::span(&rest, 1));
    REQUIRE(!failed.ok());
    CHECK(failed.error().message.find((dir / "in.bin").string() +
                                      ": the zip record at bytes [1000, 7000) has CRC-32 0x") == 0);
    char expected[64];
    std::snprintf(expected, sizeof expected, "but the archive records 0x%08x", wrong);
    CHECK(failed.error().message.find(expected) != std::string::npos);
  }
  SUBCASE("records without a CRC are not checked") {
    TensorRef none = ref;
    none.has_crc32 = false;
    none.crc32 = 0;
    RecordChecker checker(inputs);
    RecordPiece p = piece(0, 10);
    REQUIRE(checker.add(none, std::span(&p, 1)).ok());
    REQUIRE(checker.finish().ok());
    CHECK(checker.completion_bytes() == 0);
  }
}

TEST_CASE("executed plans check the records they read, whatever the read path") {
  TempDir dir("crc_exec");
  // A record of 64 floats, read as a contiguous tensor, as a transposed view (scratch path),
  // and as every other row (direct lines with gaps).
  Bytes file = random_bytes(4096, 2);
  write_file(dir / "in.bin", file);
  const std::uint64_t begin = 512, size = 256;
  const std::uint32_t good = crc_of(file, begin, begin + size);
  struct Case {
    const char* what;
    Shape shape, strides;
    Shape out_shape;
  };
  for (const Case& c :
       {Case{"contiguous", {8, 8}, {8, 1}, {8, 8}}, Case{"transposed", {8, 8}, {1, 8}, {8, 8}},
        Case{"every other row", {4, 8}, {16, 1}, {4, 8}}}) {
    CAPTURE(c.what);
    for (bool damaged : {false, true}) {
      CAPTURE(damaged);
      TensorRef ref = record_view(begin, size, damaged ? good ^ 1u : good, c.shape, c.strides);
      Plan plan;
      plan.inputs = {dir / "in.bin"};
      plan.files.push_back(
          output_file("model.safetensors", {tensor("w", c.out_shape, {{ref, {0, 0}}})}));
      fs::path out = dir.sub(std::string(c.what) + (damaged ? "-bad" : "-good"));
      auto written = execute_plan(plan, out, {});
      if (!damaged) {
        CHECK_MESSAGE(written.ok(), written.error().message);
        continue;
      }
      REQUIRE(!written.ok());
      CHECK(written.error().message.find("has CRC-32") != std::string::npos);
      CHECK(written.error().message.find("the file is damaged") != std::string::npos);
      CHECK(!fs::exists(out / "model.safetensors"));
    }
  }
}
