#include "plan/plan.h"

#include <filesystem>

namespace ckptstream {

std::string shape_text(const Shape& shape) {
  std::string text = "[";
  for (std::size_t d = 0; d < shape.size(); ++d) text += (d ? ", " : "") + std::to_string(shape[d]);
  return text + "]";
}

std::int64_t numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (std::size_t d = shape.size(); d-- > 1;) strides[d - 1] = strides[d] * shape[d];
  return strides;
}

bool is_contiguous(const Shape& shape, const Shape& strides) {
  if (strides.size() != shape.size()) return false;
  std::int64_t expected = 1;
  for (std::size_t d = shape.size(); d-- > 0;) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

std::uint64_t nbytes(const LogicalTensor& tensor) {
  return static_cast<std::uint64_t>(numel(tensor.shape)) * element_size(tensor.dtype);
}

Shape header_shape(DType dtype, const Shape& shape) {
  Shape out = shape;
  if (dtype == DType::kF4E2M1FNx2 && !out.empty()) out.back() *= 2;
  return out;
}

bool is_safe_relative_name(const std::string& name) {
  std::filesystem::path path(name);
  if (name.empty() || path.is_absolute()) return false;
  for (const auto& part : path) {
    if (part == "." || part == ".." || part.empty()) return false;
    if (part.string().rfind(".ckptstream-staging", 0) == 0) return false;
  }
  return name.back() != '/';
}

std::uint64_t OutputFile::size() const {
  return header.size() + (tensors.empty() ? 0 : tensors.back().data_end) + tail_bytes;
}

}  // namespace ckptstream
