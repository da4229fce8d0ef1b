// Element-wise dtype conversion, bit-exact with torch's Tensor.to() on CPU: float32 -> bfloat16
// rounds to nearest even, float32 -> float16 as c10::Half does (IEEE round to nearest even,
// overflow to inf, subnormals kept), NaN stays NaN with the exact bit pattern torch's AVX2/AVX512
// kernels write (dtype_convert.cc lists them), float64 -> 16-bit rounds through float32 as torch
// does. Only real floating-point types convert; integer, bool, complex and float8 tensors are
// never cast.
#pragma once

#include <cstddef>
#include <span>

#include "ckptstream/dtype.h"

namespace ckptstream {

bool can_convert(DType from, DType to);  // true for from == to, and between F16/BF16/F32/F64

// Converts `count` elements; src holds count*element_size(from) bytes (little-endian), dst
// count*element_size(to) bytes. src and dst must not overlap unless from == to.
void convert_elements(DType from, DType to, const std::byte* src, std::byte* dst,
                      std::size_t count);

// The same for a slice of a larger contiguous tensor: the `count` elements starting at element
// `first` of a tensor of `tensor_numel` elements. Torch's float64 -> bfloat16 kernel writes a
// different NaN pattern in its scalar tail (the last tensor_numel % 16 elements) than in its
// vectorised body; knowing the position reproduces it exactly. convert_elements(...) is
// convert_elements_at(..., 0, count).
void convert_elements_at(DType from, DType to, const std::byte* src, std::byte* dst,
                         std::size_t count, std::size_t first, std::size_t tensor_numel);

// Reverses the byte order of each element in place (complex: each half separately).
void byteswap_elements(DType dtype, std::byte* data, std::size_t count);

}  // namespace ckptstream
