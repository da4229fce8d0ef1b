#include "core/crc32.h"

#include <libdeflate.h>

#include <array>

namespace ckptstream {
namespace {

constexpr std::uint32_t kPolynomial = 0xEDB88320u;  // reflected: bit 31 is x^0

// a * b modulo the polynomial, in the reflected representation.
constexpr std::uint32_t multiply(std::uint32_t a, std::uint32_t b) {
  std::uint32_t product = 0;
  for (std::uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
    if (a & bit) product ^= b;
    b = (b & 1) ? (b >> 1) ^ kPolynomial : b >> 1;  // b * x
  }
  return product;
}

// x^(2^k) modulo the polynomial, for k = 0 .. 63.
constexpr std::array<std::uint32_t, 64> make_powers() {
  std::array<std::uint32_t, 64> powers{};
  powers[0] = 1u << 30;  // x^1
  for (std::size_t k = 1; k < powers.size(); ++k)
    powers[k] = multiply(powers[k - 1], powers[k - 1]);
  return powers;
}
constexpr std::array<std::uint32_t, 64> kPowers = make_powers();

}  // namespace

std::uint32_t crc32_update(std::uint32_t crc, std::span<const std::byte> bytes) {
  return libdeflate_crc32(crc, bytes.data(), bytes.size());
}

std::uint32_t crc32_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t length_b) {
  // Appending B's bytes multiplies A's remainder by x^(8 * length_b); B's own CRC adds in (the
  // pre- and post-conditioning of both cancel out in the xor).
  std::uint32_t shift = 1u << 31;  // x^0
  std::uint64_t bits = length_b;
  for (std::size_t k = 3; bits != 0; bits >>= 1, ++k)  // 8 * length_b = length_b * 2^3
    if (bits & 1) shift = multiply(kPowers[k], shift);
  return multiply(shift, crc_a) ^ crc_b;
}

}  // namespace ckptstream
