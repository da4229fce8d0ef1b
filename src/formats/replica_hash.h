// Replicated tensors (a buffer every FSDP rank saved, a layer norm every Megatron TP rank holds)
// are read from one rank, after checking that every rank holds the same values: each rank's copy
// is hashed (XXH3-128 of its elements in one visiting order, whatever its strides) and the
// digests compared. Shared by every reader of rank files.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "ckptstream/result.h"
#include "io/input_file.h"
#include "plan/plan.h"

namespace ckptstream {

using ValueDigest = std::array<std::uint64_t, 2>;

// XXH3-128 of a view's elements, visited with dims in `order` (outermost first; the same order
// for every rank, so equal values give equal digests whatever the strides). Reads go through a
// bounded buffer: a run of the innermost dim is read in windows of at most 1 MiB.
Result<ValueDigest> hash_view_values(const InputFile& file, const TensorRef& ref,
                                     std::span<const std::size_t> order);

// Dims by decreasing stride (ties: logical order): the innermost dim is the one whose elements
// lie closest together, so reads move forward through the file.
std::vector<std::size_t> visit_order(const Shape& strides);

}  // namespace ckptstream
