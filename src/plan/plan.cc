#include "plan/plan.h"

namespace ckptstream {

std::int64_t numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::uint64_t nbytes(const LogicalTensor& tensor) {
  return static_cast<std::uint64_t>(numel(tensor.shape)) * element_size(tensor.dtype);
}

std::uint64_t OutputFile::size() const {
  return header.size() + (tensors.empty() ? 0 : tensors.back().data_end);
}

}  // namespace ckptstream
