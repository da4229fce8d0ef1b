#include "ckptstream/dtype.h"

#include <array>

namespace ckptstream {
namespace {

// safetensors' Dtype enum order (landscape.md §1.3): BOOL F4 F6_E2M3 F6_E3M2 U8 I8 F8_E5M2 F8_E4M3
// F8_E8M0 F8_E4M3FNUZ F8_E5M2FNUZ I16 U16 F16 BF16 I32 U32 F32 C64 F64 I64 U64.
constexpr std::array<DTypeInfo, 32> kDTypes = {{
    {DType::kBool, "bool", "BoolStorage", "BOOL", 1, 0, false, false},
    {DType::kU8, "uint8", "ByteStorage", "U8", 1, 4, false, false},
    {DType::kI8, "int8", "CharStorage", "I8", 1, 5, false, false},
    {DType::kI16, "int16", "ShortStorage", "I16", 2, 11, false, false},
    {DType::kU16, "uint16", "", "U16", 2, 12, false, false},
    {DType::kI32, "int32", "IntStorage", "I32", 4, 15, false, false},
    {DType::kU32, "uint32", "", "U32", 4, 16, false, false},
    {DType::kI64, "int64", "LongStorage", "I64", 8, 20, false, false},
    {DType::kU64, "uint64", "", "U64", 8, 21, false, false},
    {DType::kF16, "float16", "HalfStorage", "F16", 2, 13, true, false},
    {DType::kBF16, "bfloat16", "BFloat16Storage", "BF16", 2, 14, true, false},
    {DType::kF32, "float32", "FloatStorage", "F32", 4, 17, true, false},
    {DType::kF64, "float64", "DoubleStorage", "F64", 8, 19, true, false},
    {DType::kComplex32, "complex32", "", "", 4, -1, false, true},
    {DType::kComplex64, "complex64", "ComplexFloatStorage", "C64", 8, 18, false, true},
    {DType::kComplex128, "complex128", "ComplexDoubleStorage", "", 16, -1, false, true},
    {DType::kF8E5M2, "float8_e5m2", "", "F8_E5M2", 1, 6, false, false},
    {DType::kF8E4M3FN, "float8_e4m3fn", "", "F8_E4M3", 1, 7, false, false},
    {DType::kF8E5M2FNUZ, "float8_e5m2fnuz", "", "F8_E5M2FNUZ", 1, 10, false, false},
    {DType::kF8E4M3FNUZ, "float8_e4m3fnuz", "", "F8_E4M3FNUZ", 1, 9, false, false},
    {DType::kF8E8M0FNU, "float8_e8m0fnu", "", "F8_E8M0", 1, 8, false, false},
    {DType::kF4E2M1FNx2, "float4_e2m1fn_x2", "", "F4", 1, 1, false, false},
    {DType::kQInt8, "qint8", "QInt8Storage", "", 1, -1, false, false},
    {DType::kQUInt8, "quint8", "QUInt8Storage", "", 1, -1, false, false},
    {DType::kQInt32, "qint32", "QInt32Storage", "", 4, -1, false, false},
    {DType::kQUInt4x2, "quint4x2", "QUInt4x2Storage", "", 1, -1, false, false},
    {DType::kQUInt2x4, "quint2x4", "QUInt2x4Storage", "", 1, -1, false, false},
    {DType::kBits8, "bits8", "", "", 1, -1, false, false},
    {DType::kBits16, "bits16", "", "", 2, -1, false, false},
    {DType::kBits1x8, "bits1x8", "", "", 1, -1, false, false},
    {DType::kBits2x4, "bits2x4", "", "", 1, -1, false, false},
    {DType::kBits4x2, "bits4x2", "", "", 1, -1, false, false},
}};

}  // namespace

const DTypeInfo& dtype_info(DType dtype) {
  return kDTypes[static_cast<std::size_t>(dtype)];
}

std::optional<DType> dtype_from_torch_name(std::string_view name) {
  for (const auto& info : kDTypes)
    if (info.torch_name == name) return info.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_storage_class(std::string_view name) {
  if (name.empty()) return std::nullopt;
  for (const auto& info : kDTypes)
    if (info.storage_class == name) return info.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_safetensors_name(std::string_view name) {
  if (name.empty()) return std::nullopt;
  for (const auto& info : kDTypes)
    if (info.safetensors_name == name) return info.dtype;
  return std::nullopt;
}

}  // namespace ckptstream
