#include "plan/views.h"

#include <algorithm>
#include <numeric>

#include "plan/tiling.h"

namespace ckptstream {
namespace {

std::string named(const LogicalTensor& tensor) {
  return "tensor '" + tensor.name + "'";
}

template <class T>
void replace_at(std::vector<T>& values, std::size_t dim, std::initializer_list<T> with) {
  values.erase(values.begin() + static_cast<long>(dim));
  values.insert(values.begin() + static_cast<long>(dim), with);
}

// A fragment's box narrowed to [start, start + length) of its own `dim` (local coordinates).
Fragment narrow_box(const Fragment& fragment, std::size_t dim, std::int64_t start,
                    std::int64_t length) {
  Fragment out = fragment;
  out.source.offset += start * fragment.source.strides[dim];
  out.source.shape[dim] = length;
  out.offsets[dim] += start;
  return out;
}

// unflatten into [outer, inner] at `dim`: a fragment covering [o, o + n) of the flat dim becomes
// at most three boxes (a partial first row, whole rows, a partial last row).
void split_rows(const Fragment& fragment, std::size_t dim, std::int64_t inner,
                std::vector<Fragment>& out) {
  const std::int64_t o = fragment.offsets[dim];
  const std::int64_t n = fragment.source.shape[dim];
  const std::int64_t stride = fragment.source.strides[dim];
  auto emit = [&](std::int64_t from, std::int64_t rows, std::int64_t columns) {
    Fragment piece = narrow_box(fragment, dim, from - o, rows * columns);
    replace_at(piece.source.shape, dim, {rows, columns});
    replace_at(piece.source.strides, dim, {stride * inner, stride});
    replace_at(piece.offsets, dim, {from / inner, from % inner});
    out.push_back(std::move(piece));
  };
  std::int64_t at = o;
  const std::int64_t end = o + n;
  if (at % inner != 0) {  // a partial first row
    std::int64_t columns = std::min(end, (at / inner + 1) * inner) - at;
    emit(at, 1, columns);
    at += columns;
  }
  if (std::int64_t rows = (end - at) / inner; rows > 0) {
    emit(at, rows, inner);
    at += rows * inner;
  }
  if (at < end) emit(at, 1, end - at);  // a partial last row
}

// Can dims [first, last] of the fragment become one dim of the flattened tensor: a contiguous
// range of the flat index, walked with one stride?
bool merges(const Fragment& fragment, const Shape& logical, std::size_t first, std::size_t last) {
  const Shape& size = fragment.source.shape;
  // The dims after some k are whole, the dims before k have size 1.
  std::size_t k = last;
  while (k > first && size[k] == logical[k]) --k;
  for (std::size_t d = first; d < k; ++d)
    if (size[d] != 1) return false;
  // The dims with more than one element chain their strides.
  std::int64_t expected = -1;
  for (std::size_t d = last + 1; d-- > first;) {
    if (size[d] == 1) continue;
    if (expected >= 0 && fragment.source.strides[d] != expected) return false;
    expected = fragment.source.strides[d] * size[d];
  }
  return true;
}

void flatten_fragment(const Fragment& fragment, const Shape& logical, std::size_t first,
                      std::size_t last, std::vector<Fragment>& out) {
  const Shape& size = fragment.source.shape;
  if (!merges(fragment, logical, first, last)) {
    std::size_t d = first;  // the first dim of more than one element: cut it into single slices
    while (size[d] == 1) ++d;
    for (std::int64_t i = 0; i < size[d]; ++i)
      flatten_fragment(narrow_box(fragment, d, i, 1), logical, first, last, out);
    return;
  }
  std::int64_t offset = 0, count = 1, stride = 1;
  for (std::size_t d = first; d <= last; ++d) {
    offset = offset * logical[d] + fragment.offsets[d];
    count *= size[d];
    if (size[d] != 1) stride = fragment.source.strides[d];
  }
  Fragment merged = fragment;
  auto erase = [&](auto& values, auto value) {
    values.erase(values.begin() + static_cast<long>(first),
                 values.begin() + static_cast<long>(last) + 1);
    values.insert(values.begin() + static_cast<long>(first), value);
  };
  erase(merged.source.shape, count);
  erase(merged.source.strides, stride);
  erase(merged.offsets, offset);
  out.push_back(std::move(merged));
}

}  // namespace

// Everything of a tensor but its fragments (and its LoRA delta, which no view keeps): copying
// the whole tensor and clearing its fragments would keep their capacity, and a tensor cut into
// many small views (256 experts of a stacked tensor) would hold that many times its fragments.
LogicalTensor without_fragments(const LogicalTensor& tensor) {
  LogicalTensor out;
  out.name = tensor.name;
  out.source_dtype = tensor.source_dtype;
  out.dtype = tensor.dtype;
  out.shape = tensor.shape;
  out.shard_group = tensor.shard_group;
  return out;
}

LogicalTensor narrow(const LogicalTensor& tensor, std::size_t dim, std::int64_t start,
                     std::int64_t length) {
  LogicalTensor out = without_fragments(tensor);
  out.shape[dim] = length;
  for (const Fragment& fragment : tensor.fragments) {
    std::int64_t begin = fragment.offsets[dim];
    std::int64_t end = begin + fragment.source.shape[dim];
    std::int64_t lo = std::max(begin, start);
    std::int64_t hi = std::min(end, start + length);
    if (lo >= hi) continue;  // outside the slice, or an empty fragment
    Fragment clipped = narrow_box(fragment, dim, lo - begin, hi - lo);
    clipped.offsets[dim] = lo - start;
    out.fragments.push_back(std::move(clipped));
  }
  return out;
}

Result<LogicalTensor> narrow_checked(const LogicalTensor& tensor, std::size_t dim,
                                     std::int64_t start, std::int64_t length) {
  if (dim >= tensor.shape.size() || start < 0 || length < 0 || start > tensor.shape[dim] - length)
    return invalid_input(named(tensor) + " of shape " + shape_text(tensor.shape) +
                         ": cannot take [" + std::to_string(start) + ", +" +
                         std::to_string(length) + ") of dim " + std::to_string(dim));
  return narrow(tensor, dim, start, length);
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

Result<LogicalTensor> concat(std::span<const LogicalTensor> parts, std::size_t dim,
                             std::string name) {
  if (parts.empty()) return invalid_input("'" + name + "': nothing to concatenate");
  const LogicalTensor& first = parts.front();
  if (dim >= first.shape.size())
    return invalid_input("'" + name + "': cannot concatenate " +
                         std::to_string(first.shape.size()) + "-d tensors along dim " +
                         std::to_string(dim));
  LogicalTensor out;
  out.name = std::move(name);
  out.source_dtype = first.source_dtype;
  out.dtype = first.dtype;
  out.shape = first.shape;
  out.shape[dim] = 0;
  for (const LogicalTensor& part : parts) {
    Shape expected = first.shape;
    expected[dim] = part.shape.size() == expected.size() ? part.shape[dim] : -1;
    if (part.shape != expected || part.source_dtype != first.source_dtype)
      return invalid_input("'" + out.name + "': cannot concatenate " + named(part) + " (" +
                           std::string(torch_name(part.source_dtype)) + " " +
                           shape_text(part.shape) + ") to " + named(first) + " (" +
                           std::string(torch_name(first.source_dtype)) + " " +
                           shape_text(first.shape) + ") along dim " + std::to_string(dim));
    if (part.lora) return unsupported(named(part) + " has a LoRA delta: cannot concatenate it");
    for (const Fragment& fragment : part.fragments) {
      Fragment moved = fragment;
      moved.offsets[dim] += out.shape[dim];
      out.fragments.push_back(std::move(moved));
    }
    out.shape[dim] += part.shape[dim];
  }
  return out;
}

Result<LogicalTensor> unflatten(const LogicalTensor& tensor, std::size_t dim,
                                std::span<const std::int64_t> sizes) {
  std::int64_t product = 1;
  bool valid = dim < tensor.shape.size() && !sizes.empty();
  for (auto s : sizes) valid = valid && s >= 0 && !__builtin_mul_overflow(product, s, &product);
  if (!valid || product != tensor.shape[dim])
    return invalid_input(named(tensor) + " of shape " + shape_text(tensor.shape) +
                         ": cannot unflatten dim " + std::to_string(dim) + " into " +
                         shape_text(Shape(sizes.begin(), sizes.end())));
  if (tensor.lora) return unsupported(named(tensor) + " has a LoRA delta: cannot reshape it");
  if (sizes.size() == 1) return tensor;
  LogicalTensor out = without_fragments(tensor);
  if (product == 0) {  // no element: nothing to split
    out.shape.erase(out.shape.begin() + static_cast<long>(dim));
    out.shape.insert(out.shape.begin() + static_cast<long>(dim), sizes.begin(), sizes.end());
    return out;
  }
  const std::int64_t inner = product / sizes[0];
  replace_at(out.shape, dim, {sizes[0], inner});
  for (const Fragment& fragment : tensor.fragments)
    if (checked_numel(fragment.source.shape).value_or(0) > 0)
      split_rows(fragment, dim, inner, out.fragments);
  if (sizes.size() == 2) return out;
  return unflatten(out, dim + 1, sizes.subspan(1));
}

Result<LogicalTensor> flatten(const LogicalTensor& tensor, std::size_t first, std::size_t last) {
  if (first > last || last >= tensor.shape.size())
    return invalid_input(named(tensor) + " of shape " + shape_text(tensor.shape) +
                         ": cannot flatten dims " + std::to_string(first) + ".." +
                         std::to_string(last));
  if (tensor.lora) return unsupported(named(tensor) + " has a LoRA delta: cannot reshape it");
  LogicalTensor out = without_fragments(tensor);
  std::int64_t merged = 1;
  for (std::size_t d = first; d <= last; ++d) merged *= tensor.shape[d];
  out.shape.erase(out.shape.begin() + static_cast<long>(first),
                  out.shape.begin() + static_cast<long>(last) + 1);
  out.shape.insert(out.shape.begin() + static_cast<long>(first), merged);
  for (const Fragment& fragment : tensor.fragments)
    if (checked_numel(fragment.source.shape).value_or(0) > 0)
      flatten_fragment(fragment, tensor.shape, first, last, out.fragments);
  return out;
}

Result<LogicalTensor> transpose(const LogicalTensor& tensor, std::size_t a, std::size_t b) {
  if (a >= tensor.shape.size() || b >= tensor.shape.size())
    return invalid_input(named(tensor) + " of shape " + shape_text(tensor.shape) +
                         ": cannot swap dims " + std::to_string(a) + " and " + std::to_string(b));
  if (tensor.lora) return unsupported(named(tensor) + " has a LoRA delta: cannot transpose it");
  LogicalTensor out = without_fragments(tensor);
  std::swap(out.shape[a], out.shape[b]);
  out.fragments.reserve(tensor.fragments.size());
  for (Fragment fragment : tensor.fragments) {
    std::swap(fragment.source.shape[a], fragment.source.shape[b]);
    std::swap(fragment.source.strides[a], fragment.source.strides[b]);
    std::swap(fragment.offsets[a], fragment.offsets[b]);
    out.fragments.push_back(std::move(fragment));
  }
  return out;
}

LogicalTensor zeros(std::string name, DType dtype, const Shape& shape) {
  LogicalTensor out;
  out.name = std::move(name);
  out.source_dtype = out.dtype = dtype;
  out.shape = shape;
  TensorRef ref;
  ref.zeros = true;
  ref.dtype = dtype;
  ref.shape = shape;
  ref.strides = contiguous_strides(shape);
  out.fragments.push_back(Fragment{std::move(ref), Shape(shape.size(), 0)});
  return out;
}

ChunkRange chunk_range(std::int64_t size, std::int64_t pieces, std::int64_t index) {
  std::int64_t chunk = size / pieces + (size % pieces != 0);
  std::int64_t begin = std::min(size, chunk * index);  // chunk * index <= size * pieces
  return ChunkRange{begin, std::min(size, begin + chunk) - begin};
}

ShardBox shard_grid(const Shape& shape, std::span<const std::size_t> dims,
                    std::span<const std::int64_t> pieces, std::span<const std::int64_t> coord) {
  ShardBox box{Shape(shape.size(), 0), shape};
  for (std::size_t k = 0; k < dims.size(); ++k) {
    ChunkRange range = chunk_range(box.shape[dims[k]], pieces[k], coord[k]);
    box.offsets[dims[k]] += range.begin;
    box.shape[dims[k]] = range.length;
  }
  return box;
}

}  // namespace ckptstream
