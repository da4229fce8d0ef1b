// Where a fragment's elements come from and go to, in element units. The executor produces a
// logical tensor's bytes in windows of its flat (row-major) index; for each window a fragment
// contributes a flat range of its own elements, which splits into a few boxes. Each box is
// walked in the order of its *source* strides, so reads go forward through the file, in lines:
// stretches that advance by a fixed stride in the source and in the destination.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "plan/plan.h"

namespace ckptstream {

// `count` elements: element k is read from storage element src + k*src_stride and lands at
// logical flat index dst + k*dst_stride.
struct Line {
  std::int64_t src = 0;
  std::int64_t dst = 0;
  std::int64_t count = 0;
  std::int64_t src_stride = 1;
  std::int64_t dst_stride = 1;
};

class FragmentGeometry {
 public:
  // `fragment` must already be validated against `logical_shape` (plan_check.h).
  FragmentGeometry(const Fragment& fragment, const Shape& logical_shape);

  std::int64_t numel() const { return numel_; }

  // How many of the fragment's elements have a logical flat index below `flat`.
  std::int64_t count_before(std::int64_t flat) const;

  // Storage element holding the fragment's element number `local` (row-major in the box).
  std::int64_t source_element(std::int64_t local) const;

  // Lowest and one-past-highest storage element the fragment reads.
  std::int64_t source_begin() const { return source_begin_; }
  std::int64_t source_end() const { return source_end_; }

  // True when walking the fragment in destination order only moves forward in the source,
  // so everything before source_element(local) is consumed once `local` elements are written.
  bool reads_in_order() const { return reads_in_order_; }

  // Calls `emit` for the lines covering the fragment's elements [begin, end) (local indices),
  // box by box, each box in source order.
  void for_each_line(std::int64_t begin, std::int64_t end,
                     const std::function<void(const Line&)>& emit) const;

 private:
  struct Dim {
    std::int64_t size;
    std::int64_t src_stride;
    std::int64_t dst_stride;
  };
  void split(std::size_t dim, std::int64_t begin, std::int64_t end,
             std::vector<std::int64_t>& start, const std::function<void(const Line&)>& emit) const;
  void emit_box(const std::vector<std::int64_t>& start, std::size_t dim, std::int64_t size,
                const std::function<void(const Line&)>& emit) const;

  std::vector<Dim> dims_;              // in logical order
  std::vector<std::int64_t> offsets_;  // box corner in the logical tensor
  std::vector<std::int64_t> inner_;    // inner_[d] = product of dims_[d+1..].size
  std::vector<std::int64_t> logical_stride_;
  std::int64_t src_base_ = 0;  // storage element of the box's first element
  std::int64_t dst_base_ = 0;  // logical flat index of the box's first element
  std::int64_t numel_ = 0;
  std::int64_t source_begin_ = 0;
  std::int64_t source_end_ = 0;
  bool reads_in_order_ = true;
};

}  // namespace ckptstream
