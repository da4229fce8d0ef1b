#include "exec/fragment_geometry.h"

#include <algorithm>

namespace ckptstream {

FragmentGeometry::FragmentGeometry(const Fragment& fragment, const Shape& logical_shape) {
  const TensorRef& source = fragment.source;
  std::size_t rank = logical_shape.size();
  logical_stride_.assign(rank, 1);
  for (std::size_t d = rank; d-- > 1;)
    logical_stride_[d - 1] = logical_stride_[d] * logical_shape[d];
  offsets_ = fragment.offsets;
  src_base_ = source.offset;
  numel_ = 1;
  for (std::size_t d = 0; d < rank; ++d) {
    dims_.push_back({source.shape[d], source.strides[d], logical_stride_[d]});
    dst_base_ += fragment.offsets[d] * logical_stride_[d];
    numel_ *= source.shape[d];
  }
  inner_.assign(rank, 1);
  for (std::size_t d = rank; d-- > 1;) inner_[d - 1] = inner_[d] * dims_[d].size;

  source_begin_ = src_base_;
  source_end_ = src_base_ + (numel_ > 0 ? 1 : 0);
  std::int64_t inner_extent = 1;  // source elements spanned by the dims inside d, plus one
  for (std::size_t d = rank; d-- > 0;) {
    if (dims_[d].size <= 1) continue;
    if (dims_[d].src_stride < inner_extent) reads_in_order_ = false;
    inner_extent += (dims_[d].size - 1) * dims_[d].src_stride;
  }
  if (numel_ > 0) source_end_ = src_base_ + inner_extent;
}

std::int64_t FragmentGeometry::count_before(std::int64_t flat) const {
  if (numel_ == 0 || flat <= 0) return 0;
  if (dims_.empty()) return 1;  // 0-d: its one element has flat index 0
  // Box elements before `flat` in row-major order: at each dim, the whole rows of the box
  // before flat's index, then (if flat's index is inside the box) the same question one dim in.
  std::int64_t rem = flat;
  std::int64_t count = 0;
  for (std::size_t d = 0; d < dims_.size(); ++d) {
    std::int64_t index = rem / logical_stride_[d];
    rem %= logical_stride_[d];
    count += std::clamp<std::int64_t>(index - offsets_[d], 0, dims_[d].size) * inner_[d];
    if (index < offsets_[d] || index >= offsets_[d] + dims_[d].size) break;
  }
  return count;
}

std::int64_t FragmentGeometry::source_element(std::int64_t local) const {
  std::int64_t src = src_base_;
  for (std::size_t d = 0; d < dims_.size(); ++d) {
    src += (local / inner_[d]) * dims_[d].src_stride;
    local %= inner_[d];
  }
  return src;
}

void FragmentGeometry::for_each_line(std::int64_t begin, std::int64_t end,
                                     const std::function<void(const Line&)>& emit) const {
  if (begin >= end) return;
  if (dims_.empty()) {  // 0-d: one element
    emit(Line{src_base_, dst_base_, 1, 1, 1});
    return;
  }
  std::vector<std::int64_t> start(dims_.size(), 0);
  split(0, begin, end, start, emit);
}

// [begin, end) is a range of the sub-box made of dims [dim, rank) at position start[0..dim).
void FragmentGeometry::split(std::size_t dim, std::int64_t begin, std::int64_t end,
                             std::vector<std::int64_t>& start,
                             const std::function<void(const Line&)>& emit) const {
  if (begin >= end) return;
  std::int64_t row = inner_[dim];  // elements per index of `dim`
  std::int64_t first = begin / row, last = end / row;
  if (begin % row == 0 && end % row == 0) {
    start[dim] = first;
    return emit_box(start, dim, last - first, emit);
  }
  if (first == last) {  // inside one row
    start[dim] = first;
    return split(dim + 1, begin % row, end % row, start, emit);
  }
  if (begin % row != 0) {
    start[dim] = first;
    split(dim + 1, begin % row, row, start, emit);
    ++first;
  }
  if (first < last) {
    start[dim] = first;
    emit_box(start, dim, last - first, emit);
  }
  if (end % row != 0) {
    start[dim] = last;
    split(dim + 1, 0, end % row, start, emit);
  }
}

// The box fixed at start[0..dim), spanning [start[dim], start[dim]+size) of `dim` and all of
// the dims after it. Walks it with the smallest source stride innermost, merging dims that are
// contiguous in both source and destination, so a full-width box becomes one long line.
void FragmentGeometry::emit_box(const std::vector<std::int64_t>& start, std::size_t dim,
                                std::int64_t size,
                                const std::function<void(const Line&)>& emit) const {
  std::int64_t src = src_base_, dst = dst_base_;
  for (std::size_t d = 0; d <= dim; ++d) {
    src += start[d] * dims_[d].src_stride;
    dst += start[d] * dims_[d].dst_stride;
  }
  std::vector<Dim> box;
  if (size > 1) box.push_back({size, dims_[dim].src_stride, dims_[dim].dst_stride});
  for (std::size_t d = dim + 1; d < dims_.size(); ++d)
    if (dims_[d].size > 1) box.push_back(dims_[d]);
  std::stable_sort(box.begin(), box.end(), [](const Dim& a, const Dim& b) {
    return a.src_stride != b.src_stride ? a.src_stride > b.src_stride : a.dst_stride > b.dst_stride;
  });
  std::vector<Dim> merged;
  for (const Dim& d : box) {
    if (!merged.empty()) {
      Dim& outer = merged.back();
      if (outer.src_stride == d.src_stride * d.size && outer.dst_stride == d.dst_stride * d.size) {
        outer = {outer.size * d.size, d.src_stride, d.dst_stride};
        continue;
      }
    }
    merged.push_back(d);
  }
  if (merged.empty()) merged.push_back({1, 1, 1});
  const Dim line = merged.back();
  merged.pop_back();
  // Odometer over the outer dims.
  std::vector<std::int64_t> index(merged.size(), 0);
  while (true) {
    emit(Line{src, dst, line.size, line.src_stride, line.dst_stride});
    std::size_t d = merged.size();
    while (d > 0) {
      --d;
      src += merged[d].src_stride;
      dst += merged[d].dst_stride;
      if (++index[d] < merged[d].size) break;
      src -= merged[d].src_stride * merged[d].size;
      dst -= merged[d].dst_stride * merged[d].size;
      index[d] = 0;
      if (d == 0) return;
    }
    if (merged.empty()) return;
  }
}

}  // namespace ckptstream
