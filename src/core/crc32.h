// CRC-32 (ISO-HDLC: the zip and zlib checksum, reflected polynomial 0xEDB88320), computed by
// libdeflate (carry-less multiplication where the CPU has it: many GB/s per core, so checking every
// byte a merge reads costs little), and the combination of the CRCs of two pieces into the CRC of
// both, which lets pieces of one record read out of order be checked without reading it twice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace ckptstream {

// Start with crc = 0 and feed the previous result back in to continue a running checksum.
std::uint32_t crc32_update(std::uint32_t crc, std::span<const std::byte> bytes);

// The CRC-32 of A followed by B, from crc_a = CRC-32(A), crc_b = CRC-32(B) and B's length.
std::uint32_t crc32_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t length_b);

}  // namespace ckptstream
