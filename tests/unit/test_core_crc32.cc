// CRC-32 (core/crc32.h): the zip checksum, incremental, and the combination of two pieces.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/crc32.h"

using namespace ckptstream;

namespace {

std::span<const std::byte> bytes_of(const std::string& text) {
  return std::as_bytes(std::span(text.data(), text.size()));
}

// The definition, one bit at a time: what every fast implementation must agree with.
std::uint32_t bitwise_crc32(const std::string& data) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (char c : data) {
    crc ^= static_cast<unsigned char>(c);
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
  }
  return ~crc;
}

std::string random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 random(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(random() & 0xFF);
  return out;
}

}  // namespace

TEST_CASE("crc32 matches the standard check value and is incremental") {
  CHECK(crc32_update(0, bytes_of("123456789")) == 0xCBF43926u);
  CHECK(crc32_update(0, {}) == 0u);
  std::string data = random_bytes(100'000, 1);
  CHECK(crc32_update(0, bytes_of(data)) == bitwise_crc32(data));
  for (std::size_t split : {0, 1, 15, 16, 17, 999, 65536, 99'999}) {
    std::uint32_t crc = crc32_update(0, bytes_of(data).first(split));
    CHECK(crc32_update(crc, bytes_of(data).subspan(split)) == bitwise_crc32(data));
  }
}

TEST_CASE("crc32_combine gives the CRC of two pieces joined, at any split") {
  std::string data = random_bytes(70'000, 2);
  const std::uint32_t whole = bitwise_crc32(data);
  for (std::size_t split : {0, 1, 7, 8, 4096, 65535, 65536, 69'999, 70'000}) {
    CAPTURE(split);
    std::uint32_t a = crc32_update(0, bytes_of(data).first(split));
    std::uint32_t b = crc32_update(0, bytes_of(data).subspan(split));
    CHECK(crc32_combine(a, b, data.size() - split) == whole);
  }
  // Three pieces, joined right to left and left to right.
  std::uint32_t p1 = crc32_update(0, bytes_of(data).first(1000));
  std::uint32_t p2 = crc32_update(0, bytes_of(data).subspan(1000, 30'000));
  std::uint32_t p3 = crc32_update(0, bytes_of(data).subspan(31'000));
  CHECK(crc32_combine(crc32_combine(p1, p2, 30'000), p3, 39'000) == whole);
  CHECK(crc32_combine(p1, crc32_combine(p2, p3, 39'000), 69'000) == whole);
  // A length past 4 GiB takes the table's high powers: the CRC of 5 GiB of zeros after "a", from
  // the zero-run's CRC built by doubling.
  std::uint32_t zeros = crc32_update(0, bytes_of(std::string(1024, '\0')));
  std::uint64_t length = 1024;
  while (length < (5ull << 30)) {
    zeros = crc32_combine(zeros, zeros, length);
    length *= 2;
  }
  std::uint32_t a = crc32_update(0, bytes_of("a"));
  std::uint32_t joined = crc32_combine(a, zeros, length);
  CHECK(crc32_combine(a, 0, 0) == a);  // an empty second piece changes nothing
  // The same 5 GiB joined in two halves, each built by doubling on its own.
  std::uint32_t halves = crc32_update(0, bytes_of(std::string(1024, '\0')));
  std::uint64_t half_length = 1024;
  while (half_length < length / 2) {
    halves = crc32_combine(halves, halves, half_length);
    half_length *= 2;
  }
  CHECK(crc32_combine(crc32_combine(a, halves, half_length), halves, half_length) == joined);
}
