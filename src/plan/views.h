// View operations on logical tensors: the vocabulary in which every layout rule is written. Each
// returns new fragments over the same source bytes (no byte moves until the plan runs), so a
// layout (an FSDP shard, a TP column or row split, a per-group QKV interleave, [gate; up] halves,
// a stacked-layer or expert axis, padded vocab rows) is a short composition of these:
//
//   narrow / select     a slice of one dim / one index of it (torch.narrow, torch.select)
//   concat              tensors side by side along a dim (torch.cat)
//   unflatten / flatten split one dim into several / merge adjacent dims (torch.unflatten,
//                       torch.flatten); a fragment whose strides do not merge is split
//   transpose           two dims swapped (torch.transpose)
//   zeros               a region of zeros, read from no file (Megatron pads the vocab with them)
//   chunk_range         torch.chunk's piece `index` of `pieces` (ceil-sized, trailing pieces
//                       shorter or empty): FSDP Shard(d), and TP/EP splits
//
// Shapes are checked: a bad argument is an error naming the tensor, never a wrong plan.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "ckptstream/result.h"
#include "plan/plan.h"

namespace ckptstream {

// The sub-tensor [start, start + length) of `dim` (torch.narrow): fragments are clipped to it and
// re-offset. `dim`, `start` and `length` must lie inside the tensor (callers check; see
// narrow_checked).
LogicalTensor narrow(const LogicalTensor& tensor, std::size_t dim, std::int64_t start,
                     std::int64_t length);
Result<LogicalTensor> narrow_checked(const LogicalTensor& tensor, std::size_t dim,
                                     std::int64_t start, std::int64_t length);
// Index `index` of `dim`, with that dimension removed (torch.select).
LogicalTensor select(const LogicalTensor& tensor, std::size_t dim, std::int64_t index);

// torch.cat(parts, dim) named `name`: every part has the rank, source dtype and sizes (except
// `dim`) of the first. The result's written dtype is the first part's.
Result<LogicalTensor> concat(std::span<const LogicalTensor> parts, std::size_t dim,
                             std::string name);

// torch.unflatten(tensor, dim, sizes): dim becomes len(sizes) dims whose product is its size.
Result<LogicalTensor> unflatten(const LogicalTensor& tensor, std::size_t dim,
                                std::span<const std::int64_t> sizes);
// torch.flatten(tensor, first, last): dims [first, last] become one.
Result<LogicalTensor> flatten(const LogicalTensor& tensor, std::size_t first, std::size_t last);

// torch.transpose(tensor, a, b): dims a and b swapped, a view (each fragment swaps its strides;
// the executor reads the transposed elements where they are). Megatron's legacy GroupedMLP keeps
// its experts' weights transposed relative to nn.Linear.
Result<LogicalTensor> transpose(const LogicalTensor& tensor, std::size_t a, std::size_t b);

// A tensor of zeros of `dtype` and `shape`: one fragment read from no input (TensorRef::zeros).
LogicalTensor zeros(std::string name, DType dtype, const Shape& shape);

// torch.chunk(size, pieces)[index] as [begin, begin + length): ceil(size / pieces) per piece, the
// trailing pieces shorter or empty. `pieces` >= 1, 0 <= index < pieces.
struct ChunkRange {
  std::int64_t begin = 0;
  std::int64_t length = 0;
};
ChunkRange chunk_range(std::int64_t size, std::int64_t pieces, std::int64_t index);

// The box a grid of shards gives one coordinate: for each k, dims[k] of `shape` (already cut by
// earlier entries) is cut into pieces[k] with chunk_range and coord[k] taken, in order, as
// DTensor does with a Shard placement per mesh dim.
struct ShardBox {
  Shape offsets;
  Shape shape;
};
ShardBox shard_grid(const Shape& shape, std::span<const std::size_t> dims,
                    std::span<const std::int64_t> pieces, std::span<const std::int64_t> coord);

}  // namespace ckptstream
