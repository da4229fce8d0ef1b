#include <doctest/doctest.h>
#include <simdjson.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "exec/dtype_convert.h"

using namespace ckptstream;

namespace {

const std::filesystem::path kDir = std::filesystem::path(CKPT_FIXTURES) / "dtype";
constexpr DType kFloats[] = {DType::kF16, DType::kBF16, DType::kF32, DType::kF64};

std::vector<std::byte> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), path.string());
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

std::string name(DType dtype) {
  return std::string(dtype_info(dtype).safetensors_name);
}

template <class In, class Out>
Out convert_one(DType from, DType to, In value) {
  Out out;
  convert_elements(from, to, reinterpret_cast<const std::byte*>(&value),
                   reinterpret_cast<std::byte*>(&out), 1);
  return out;
}

// First mismatching element, as a readable message.
std::string first_difference(const std::vector<std::byte>& input,
                             const std::vector<std::byte>& want, const std::vector<std::byte>& got,
                             std::size_t in_size, std::size_t out_size) {
  for (std::size_t i = 0; i * out_size < want.size(); ++i) {
    if (std::memcmp(&want[i * out_size], &got[i * out_size], out_size) == 0) continue;
    auto hex = [](const std::byte* p, std::size_t n) {
      std::uint64_t v = 0;
      std::memcpy(&v, p, n);
      char buf[24];
      std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
      return std::string(buf);
    };
    return "element " + std::to_string(i) + ": input " + hex(&input[i * in_size], in_size) +
           " torch " + hex(&want[i * out_size], out_size) + " ours " +
           hex(&got[i * out_size], out_size);
  }
  return "";
}

}  // namespace

TEST_CASE("convert_elements matches torch byte for byte on the fixture (every pair)") {
  simdjson::dom::parser parser;
  simdjson::dom::element meta = parser.load((kDir / "dtype_fixtures.json").string());
  int compared = 0;
  for (simdjson::dom::element c : meta["cases"].get_array()) {
    std::string case_name(c["name"].get_string().value());
    auto count = static_cast<std::size_t>(c["count"].get_uint64().value());
    for (DType from : kFloats) {
      auto input = read_bytes(kDir / (case_name + "_" + name(from) + ".bin"));
      REQUIRE(input.size() == count * element_size(from));
      for (DType to : kFloats) {
        if (from == to) continue;
        CAPTURE(case_name);
        CAPTURE(name(from));
        CAPTURE(name(to));
        auto want = read_bytes(kDir / (case_name + "_" + name(from) + "_to_" + name(to) + ".bin"));
        REQUIRE(want.size() == count * element_size(to));
        std::vector<std::byte> got(want.size());
        convert_elements(from, to, input.data(), got.data(), count);
        CHECK_MESSAGE(got == want,
                      first_difference(input, want, got, element_size(from), element_size(to)));
        // The same conversion in uneven slices gives the same bytes (positions are kept).
        std::vector<std::byte> sliced(want.size());
        for (std::size_t first = 0; first < count; first += 37) {
          std::size_t n = std::min<std::size_t>(37, count - first);
          convert_elements_at(from, to, input.data() + first * element_size(from),
                              sliced.data() + first * element_size(to), n, first, count);
        }
        CHECK(sliced == want);
        ++compared;
      }
    }
  }
  CHECK(compared == 24);
}

TEST_CASE("known torch facts: NaN patterns, ties, double rounding") {
  using F32 = std::uint32_t;
  using H = std::uint16_t;
  // f32 -> bf16: every NaN becomes 0xFFFF (torch's vector kernel); ties go to even.
  CHECK(convert_one<F32, H>(DType::kF32, DType::kBF16, 0x7FC12345u) == 0xFFFF);
  CHECK(convert_one<F32, H>(DType::kF32, DType::kBF16, 0xFFC00000u) == 0xFFFF);
  CHECK(convert_one<F32, H>(DType::kF32, DType::kBF16, 0x3F808000u) == 0x3F80);
  CHECK(convert_one<F32, H>(DType::kF32, DType::kBF16, 0x3F818000u) == 0x3F82);
  CHECK(convert_one<F32, H>(DType::kF32, DType::kBF16, 0x7F7F8000u) == 0x7F80);  // to inf
  // f32 -> f16: payload kept and quieted; 65520 is a tie that rounds to inf; subnormals.
  CHECK(convert_one<F32, H>(DType::kF32, DType::kF16, 0x7FC12345u) == 0x7E09);
  CHECK(convert_one<F32, H>(DType::kF32, DType::kF16, 0xFF800001u) == 0xFE00);
  CHECK(convert_one<F32, H>(DType::kF32, DType::kF16, std::bit_cast<F32>(65520.0f)) == 0x7C00);
  CHECK(convert_one<F32, H>(DType::kF32, DType::kF16, std::bit_cast<F32>(65519.0f)) == 0x7BFF);
  CHECK(convert_one<F32, H>(DType::kF32, DType::kF16, 0x33800000u) == 0x0001);  // 2^-24
  CHECK(convert_one<F32, H>(DType::kF32, DType::kF16, 0x33000000u) == 0x0000);  // 2^-25 tie
  CHECK(convert_one<F32, H>(DType::kF32, DType::kF16, 0x80000000u) == 0x8000);  // -0.0
  // f16 -> bf16: always 0x7FC0 (scalar c10 path)
  CHECK(convert_one<H, H>(DType::kF16, DType::kBF16, 0xFE12) == 0x7FC0);
  // bf16 -> f32 keeps signalling NaNs as they are.
  CHECK(convert_one<H, F32>(DType::kBF16, DType::kF32, 0x7F81) == 0x7F810000u);
  // f64 -> bf16 rounds through float32 (twice), and short tensors take the scalar NaN.
  CHECK(convert_one<double, H>(DType::kF64, DType::kBF16, 1 + 0x1p-8 + 0x1p-30) == 0x3F80);
  CHECK(convert_one<double, H>(DType::kF64, DType::kF16, 1 + 0x1p-11 + 0x1p-30) == 0x3C00);
  CHECK(convert_one<std::uint64_t, H>(DType::kF64, DType::kBF16, 0x7FF8000000000001ull) == 0x7FC0);
  std::vector<double> nans(33, std::bit_cast<double>(0xFFF8000000000000ull));
  std::vector<H> out(33);
  convert_elements(DType::kF64, DType::kBF16, reinterpret_cast<const std::byte*>(nans.data()),
                   reinterpret_cast<std::byte*>(out.data()), nans.size());
  CHECK(out[0] == 0xFFFF);
  CHECK(out[31] == 0xFFFF);
  CHECK(out[32] == 0x7FC0);  // 33 % 16 == 1: the last element is torch's scalar tail
}

TEST_CASE("can_convert: floats among themselves, anything to itself") {
  for (DType a : kFloats)
    for (DType b : kFloats) CHECK(can_convert(a, b));
  CHECK(can_convert(DType::kI64, DType::kI64));
  CHECK_FALSE(can_convert(DType::kI32, DType::kF32));
  CHECK_FALSE(can_convert(DType::kF32, DType::kF8E4M3FN));
  CHECK_FALSE(can_convert(DType::kComplex64, DType::kF32));
}

TEST_CASE("byteswap_elements reverses each element, complex halves separately") {
  std::uint8_t f32[] = {1, 2, 3, 4, 5, 6, 7, 8};
  byteswap_elements(DType::kF32, reinterpret_cast<std::byte*>(f32), 2);
  CHECK(std::vector<int>(f32, f32 + 8) == std::vector<int>{4, 3, 2, 1, 8, 7, 6, 5});
  std::uint8_t c64[] = {1, 2, 3, 4, 5, 6, 7, 8};
  byteswap_elements(DType::kComplex64, reinterpret_cast<std::byte*>(c64), 1);
  CHECK(std::vector<int>(c64, c64 + 8) == std::vector<int>{4, 3, 2, 1, 8, 7, 6, 5});
  std::uint8_t c128[16];
  for (int i = 0; i < 16; ++i) c128[i] = static_cast<std::uint8_t>(i);
  byteswap_elements(DType::kComplex128, reinterpret_cast<std::byte*>(c128), 1);
  CHECK(c128[0] == 7);
  CHECK(c128[8] == 15);
  std::uint8_t bf[] = {1, 2};
  byteswap_elements(DType::kBF16, reinterpret_cast<std::byte*>(bf), 1);
  CHECK(bf[0] == 2);
  std::uint8_t u8[] = {1, 2};
  byteswap_elements(DType::kU8, reinterpret_cast<std::byte*>(u8), 2);
  CHECK(u8[0] == 1);
}
