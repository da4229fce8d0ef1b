// One enum for every element type a checkpoint can hold, with the names torch, torch's legacy
// storage classes and safetensors give it. Element sizes are those of torch storages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ckptstream {

enum class DType : std::uint8_t {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kF16,
  kBF16,
  kF32,
  kF64,
  kComplex32,   // torch.complex32 (chalf): two f16
  kComplex64,   // two f32
  kComplex128,  // two f64
  kF8E5M2,
  kF8E4M3FN,
  kF8E5M2FNUZ,
  kF8E4M3FNUZ,
  kF8E8M0FNU,
  kF4E2M1FNx2,  // two fp4 values per byte; torch shape counts bytes
  kQInt8,
  kQUInt8,
  kQInt32,
  kQUInt4x2,
  kQUInt2x4,
  kBits8,
  kBits16,
  kBits1x8,
  kBits2x4,
  kBits4x2,
};

struct DTypeInfo {
  DType dtype;
  std::string_view torch_name;        // `torch.<name>`: "float32", "bfloat16", ...
  std::string_view storage_class;     // legacy typed storage ("FloatStorage"), "" if none
  std::string_view safetensors_name;  // "F32", "BF16", ... ; "" if safetensors has no code
  std::size_t element_size;           // bytes per storage element
  int safetensors_rank;  // position in safetensors' Dtype enum (sort order), -1 if none
  bool is_float;         // real floating point (castable by --dtype)
  bool is_complex;
};

const DTypeInfo& dtype_info(DType dtype);
inline std::size_t element_size(DType dtype) {
  return dtype_info(dtype).element_size;
}
inline std::string_view torch_name(DType dtype) {
  return dtype_info(dtype).torch_name;
}

std::optional<DType> dtype_from_torch_name(std::string_view name);        // "float32"
std::optional<DType> dtype_from_storage_class(std::string_view name);     // "FloatStorage"
std::optional<DType> dtype_from_safetensors_name(std::string_view name);  // "F32"

}  // namespace ckptstream
