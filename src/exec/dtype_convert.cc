// Float conversions that reproduce torch 2.6's CPU Tensor.to(dtype) bit for bit, written as
// integer operations so the result does not depend on the host's FPU (NaN canonicalisation,
// F16C availability) and so simple loops vectorise without -march flags.
//
// What torch 2.6 (x86-64, ATEN_CPU_CAPABILITY avx2 or avx512, one thread) writes, measured with
// the oracle (tools/fixtures/make_dtype_fixtures.py regenerates the evidence):
//   * Finite values and infinities: round to nearest, ties to even, overflow to inf, subnormal
//     inputs and outputs kept (no flush to zero), -0.0 kept.
//   * float64 -> float16 / bfloat16 round twice: first to float32, then to the 16-bit type
//     (1 + 2^-8 + 2^-30 becomes bfloat16 1.0, not the nearer 1 + 2^-7).
//   * NaN, by pair:
//       f32 -> bf16   0xFFFF for every NaN (the AVX kernel blends in 0xFFFF; it handles the whole
//                     contiguous tensor with masked vector loads, so every position). A 0-d
//                     tensor takes c10's scalar path and gives 0x7FC0: not reproduced here.
//       f64 -> bf16   0xFFFF in the vectorised body, 0x7FC0 (c10::BFloat16, sign dropped) in the
//                     scalar tail: the last (numel % 16) elements of the tensor, or all of a
//                     tensor shorter than 16. With several torch threads each thread's chunk
//                     has its own tail; we reproduce the single-threaded result.
//       f16 -> bf16   0x7FC0 always (scalar c10 path).
//       x -> f16      like the F16C instruction: sign kept, top 10 payload bits of the float32
//                     value kept, quiet bit set (0x7FC12345 -> 0x7E09, 0x7F800001 -> 0x7E00).
//                     bf16 and f64 go through float32 first.
//       bf16 -> f32   a 16-bit shift: every bit kept, signalling NaNs stay signalling.
//       f16 -> f32    sign kept, payload shifted up by 13, quiet bit set.
//       f32 <-> f64   as the SSE cvtss2sd / cvtsd2ss instructions: sign kept, payload shifted
//                     (truncated towards f32), quiet bit set. bf16/f16 -> f64 go through f32.
//   * With ATEN_CPU_CAPABILITY=default (no AVX) torch writes c10's canonical NaNs instead
//     (0x7FC0 for bf16, sign|0x7E00 for f16); that build is not what users run on x86-64.
#include "exec/dtype_convert.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstdint>
#include <cstring>

namespace ckptstream {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host needs byte swaps here");

using u16 = std::uint16_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;

// --- element conversions on bit patterns -----------------------------------------------------

// cond ? a : b without a branch (masks), so that GCC -O2 vectorises the loops using it.
template <class T>
inline T select(bool cond, T a, T b) {
  T mask = T(0) - static_cast<T>(cond);
  return static_cast<T>((a & mask) | (b & ~mask));
}

// float32 -> bfloat16 as torch's vectorised kernel: round to nearest even, NaN -> 0xFFFF.
inline u16 f32_to_bf16_vector(u32 x) {
  u32 rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
  return static_cast<u16>(select<u32>((x & 0x7FFFFFFFu) > 0x7F800000u, 0xFFFFu, rounded));
}

// float32 -> bfloat16 as c10::BFloat16's constructor: round to nearest even, NaN -> 0x7FC0.
inline u16 f32_to_bf16_scalar(u32 x) {
  u32 rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
  return static_cast<u16>(select<u32>((x & 0x7FFFFFFFu) > 0x7F800000u, 0x7FC0u, rounded));
}

inline u32 bf16_to_f32(u16 h) {
  return static_cast<u32>(h) << 16;
}

// float32 -> float16, round to nearest even, as vcvtps2ph.
inline u16 f32_to_f16(u32 x) {
  u32 sign = (x >> 16) & 0x8000u;
  u32 abs = x & 0x7FFFFFFFu;
  // Normal results: rebias the exponent (127 -> 15) and round the 13 dropped bits to even; a
  // carry out of the mantissa correctly bumps the exponent. Wraps (unused) for small inputs.
  u32 normal = (abs - 0x38000000u + 0xFFFu + ((abs >> 13) & 1u)) >> 13;
  // Subnormal results (|x| < 2^-14): adding 0.5 makes the FPU round x to a multiple of 2^-24
  // (the ulp of 0.5), the float16 subnormal step; what is left above 0.5 is the result.
  float shifted = std::bit_cast<float>(abs) + 0.5f;
  u32 subnormal = std::bit_cast<u32>(shifted) - 0x3F000000u;
  u32 nan = 0x7E00u | ((abs >> 13) & 0x3FFu);
  u32 result = select(abs < 0x38800000u, subnormal, normal);
  result = select(abs >= 0x477FF000u, 0x7C00u, result);  // >= 65520 rounds to inf
  result = select(abs > 0x7F800000u, nan, result);
  return static_cast<u16>(sign | result);
}

// float16 -> float32, exact; NaNs quieted.
inline u32 f16_to_f32(u16 h) {
  u32 sign = static_cast<u32>(h & 0x8000u) << 16;
  u32 abs = h & 0x7FFFu;
  u32 normal = (abs << 13) + 0x38000000u;
  // Subnormal inputs: the mantissa counts units of 2^-24, exactly representable in float32.
  u32 subnormal = std::bit_cast<u32>(static_cast<float>(abs) * 0x1p-24f);
  u32 special = 0x7F800000u | ((abs & 0x3FFu) << 13) | select(abs > 0x7C00u, 0x400000u, 0u);
  u32 result = select(abs < 0x400u, subnormal, normal);
  result = select(abs >= 0x7C00u, special, result);
  return sign | result;
}

inline u64 f32_to_f64(u32 x) {
  u64 converted = std::bit_cast<u64>(static_cast<double>(std::bit_cast<float>(x)));
  u64 nan = (static_cast<u64>(x & 0x80000000u) << 32) | 0x7FF8000000000000ull |
            (static_cast<u64>(x & 0x7FFFFFu) << 29);
  return select((x & 0x7FFFFFFFu) > 0x7F800000u, nan, converted);
}

inline u32 f64_to_f32(u64 x) {
  u32 converted = std::bit_cast<u32>(static_cast<float>(std::bit_cast<double>(x)));
  u32 nan = (static_cast<u32>(x >> 32) & 0x80000000u) | 0x7FC00000u |
            static_cast<u32>((x >> 29) & 0x7FFFFFu);
  return select((x & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull, nan, converted);
}

// --- loops -------------------------------------------------------------------------------------

// Applies `fn` to n elements. Blocks of a fixed length are what GCC's -O2 ("very cheap") vectoriser
// accepts; memcpy keeps unaligned input legal and compiles to plain loads and stores.
template <class In, class Out, class Fn>
void convert_loop(const std::byte* src, std::byte* dst, std::size_t n, Fn fn) {
  constexpr std::size_t kBlock = 16;
  std::size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    In in[kBlock];
    Out out[kBlock];
    std::memcpy(in, src + i * sizeof(In), sizeof(in));
    for (std::size_t k = 0; k < kBlock; ++k) out[k] = fn(in[k]);
    std::memcpy(dst + i * sizeof(Out), out, sizeof(out));
  }
  for (; i < n; ++i) {
    In in;
    std::memcpy(&in, src + i * sizeof(In), sizeof(In));
    Out out = fn(in);
    std::memcpy(dst + i * sizeof(Out), &out, sizeof(Out));
  }
}

// float64 -> bfloat16: torch's body/tail split (see the top of this file).
void f64_to_bf16(const std::byte* src, std::byte* dst, std::size_t count, std::size_t first,
                 std::size_t tensor_numel) {
  std::size_t tail_begin = tensor_numel - tensor_numel % 16;  // first element of the scalar tail
  std::size_t body = first >= tail_begin ? 0 : std::min(count, tail_begin - first);
  convert_loop<u64, u16>(src, dst, body, [](u64 x) { return f32_to_bf16_vector(f64_to_f32(x)); });
  convert_loop<u64, u16>(src + body * 8, dst + body * 2, count - body,
                         [](u64 x) { return f32_to_bf16_scalar(f64_to_f32(x)); });
}

bool is_convertible_float(DType dtype) {
  return dtype == DType::kF16 || dtype == DType::kBF16 || dtype == DType::kF32 ||
         dtype == DType::kF64;
}

template <class T>
void byteswap_loop(std::byte* data, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, data + i * sizeof(T), sizeof(T));
    if constexpr (sizeof(T) == 2) v = __builtin_bswap16(v);
    if constexpr (sizeof(T) == 4) v = __builtin_bswap32(v);
    if constexpr (sizeof(T) == 8) v = __builtin_bswap64(v);
    std::memcpy(data + i * sizeof(T), &v, sizeof(T));
  }
}

}  // namespace

bool can_convert(DType from, DType to) {
  return from == to || (is_convertible_float(from) && is_convertible_float(to));
}

void convert_elements(DType from, DType to, const std::byte* src, std::byte* dst,
                      std::size_t count) {
  convert_elements_at(from, to, src, dst, count, 0, count);
}

void convert_elements_at(DType from, DType to, const std::byte* src, std::byte* dst,
                         std::size_t count, std::size_t first, std::size_t tensor_numel) {
  using D = DType;
  if (from == to) {
    if (src != dst) std::memmove(dst, src, count * element_size(from));
    return;
  }
  auto pair = [](D a, D b) { return static_cast<int>(a) * 256 + static_cast<int>(b); };
  switch (pair(from, to)) {
    case pair(D::kF32, D::kBF16):
      return convert_loop<u32, u16>(src, dst, count, [](u32 x) { return f32_to_bf16_vector(x); });
    case pair(D::kF32, D::kF16):
      return convert_loop<u32, u16>(src, dst, count, [](u32 x) { return f32_to_f16(x); });
    case pair(D::kF32, D::kF64):
      return convert_loop<u32, u64>(src, dst, count, [](u32 x) { return f32_to_f64(x); });
    case pair(D::kBF16, D::kF32):
      return convert_loop<u16, u32>(src, dst, count, [](u16 x) { return bf16_to_f32(x); });
    case pair(D::kBF16, D::kF16):
      return convert_loop<u16, u16>(src, dst, count,
                                    [](u16 h) { return f32_to_f16(bf16_to_f32(h)); });
    case pair(D::kBF16, D::kF64):
      return convert_loop<u16, u64>(src, dst, count,
                                    [](u16 h) { return f32_to_f64(bf16_to_f32(h)); });
    case pair(D::kF16, D::kF32):
      return convert_loop<u16, u32>(src, dst, count, [](u16 x) { return f16_to_f32(x); });
    case pair(D::kF16, D::kBF16):
      return convert_loop<u16, u16>(src, dst, count,
                                    [](u16 h) { return f32_to_bf16_scalar(f16_to_f32(h)); });
    case pair(D::kF16, D::kF64):
      return convert_loop<u16, u64>(src, dst, count,
                                    [](u16 h) { return f32_to_f64(f16_to_f32(h)); });
    case pair(D::kF64, D::kF32):
      return convert_loop<u64, u32>(src, dst, count, [](u64 x) { return f64_to_f32(x); });
    case pair(D::kF64, D::kF16):
      return convert_loop<u64, u16>(src, dst, count,
                                    [](u64 x) { return f32_to_f16(f64_to_f32(x)); });
    case pair(D::kF64, D::kBF16):
      return f64_to_bf16(src, dst, count, first, tensor_numel);
    default:
      assert(false && "convert_elements: unsupported pair (check can_convert first)");
  }
}

void byteswap_elements(DType dtype, std::byte* data, std::size_t count) {
  const DTypeInfo& info = dtype_info(dtype);
  std::size_t unit = info.is_complex ? info.element_size / 2 : info.element_size;
  std::size_t units = info.is_complex ? count * 2 : count;
  switch (unit) {
    case 2:
      return byteswap_loop<u16>(data, units);
    case 4:
      return byteswap_loop<u32>(data, units);
    case 8:
      return byteswap_loop<u64>(data, units);
    default:
      return;  // one-byte elements (and packed sub-byte types) have no byte order
  }
}

}  // namespace ckptstream
