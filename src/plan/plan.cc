#include "plan/plan.h"

#include <algorithm>

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

LogicalTensor narrow(const LogicalTensor& tensor, std::size_t dim, std::int64_t start,
                     std::int64_t length) {
  LogicalTensor out = tensor;
  out.lora.reset();
  out.shape[dim] = length;
  out.fragments.clear();
  for (const Fragment& fragment : tensor.fragments) {
    std::int64_t begin = fragment.offsets[dim];
    std::int64_t end = begin + fragment.source.shape[dim];
    std::int64_t lo = std::max(begin, start);
    std::int64_t hi = std::min(end, start + length);
    if (lo >= hi) continue;  // outside the slice, or an empty fragment
    Fragment clipped = fragment;
    clipped.source.offset += (lo - begin) * fragment.source.strides[dim];
    clipped.source.shape[dim] = hi - lo;
    clipped.offsets[dim] = lo - start;
    out.fragments.push_back(std::move(clipped));
  }
  return out;
}

LogicalTensor select(const LogicalTensor& tensor, std::size_t dim, std::int64_t index) {
  LogicalTensor out = narrow(tensor, dim, index, 1);
  auto erase_at = [dim](Shape& values) { values.erase(values.begin() + static_cast<long>(dim)); };
  erase_at(out.shape);
  for (Fragment& fragment : out.fragments) {
    erase_at(fragment.source.shape);
    erase_at(fragment.source.strides);
    erase_at(fragment.offsets);
  }
  return out;
}

std::uint64_t OutputFile::size() const {
  return header.size() + (tensors.empty() ? 0 : tensors.back().data_end);
}

}  // namespace ckptstream
