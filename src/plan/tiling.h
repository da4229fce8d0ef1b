// The one tiling check of the planner: do boxes (fragments of a logical tensor, chunks of a DCP
// entry, shards of a DTensor) lie inside a tensor and cover it exactly, no holes, no overlaps?
// Every reader and the executor's boundary check (exec/plan_check.h) ask this one function and
// word the answer in their own terms ("the shards of rank 1 and rank 2 overlap", "the chunk at
// (0, 0) overlaps ...").
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "plan/plan.h"

namespace ckptstream {

// A box by reference: `offsets` and `sizes` each hold `rank` values.
struct BoxView {
  const std::int64_t* offsets = nullptr;
  const std::int64_t* sizes = nullptr;
  std::size_t rank = 0;
};

// What is wrong with a tiling, for the caller to word: box `first` has the wrong rank or lies
// outside the tensor in `dim`; boxes `first` < `second` (indexes into the boxes given) overlap;
// the boxes cover `covered` of the tensor's `total` elements (holes). kBadShape: the tensor's own
// shape is negative or overflows.
struct TilingFault {
  enum class Kind { kBadShape, kRank, kOutside, kOverlap, kHoles };
  Kind kind = Kind::kHoles;
  std::size_t first = 0;
  std::size_t second = 0;
  std::size_t dim = 0;
  std::int64_t covered = 0;
  std::int64_t total = 0;
};

// nullopt when the boxes tile `shape` exactly. Empty boxes must lie inside too, but cover nothing.
// Boxes are swept along the dim where their starts differ most, so n boxes cost O(n log n) for
// the layouts checkpoints have (a grid of shards), O(n^2) only for boxes stacked on each other.
std::optional<TilingFault> find_tiling_fault(const Shape& shape, std::span<const BoxView> boxes);

// The same for a logical tensor's fragments (box: the source view's shape at `offsets`).
std::optional<TilingFault> find_tiling_fault(const LogicalTensor& tensor);

// Element count, nullopt for a negative size or an overflow.
std::optional<std::int64_t> checked_numel(const Shape& shape);

}  // namespace ckptstream
