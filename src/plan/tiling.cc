#include "plan/tiling.h"

#include <algorithm>
#include <numeric>

namespace ckptstream {
namespace {

std::optional<std::int64_t> box_numel(const BoxView& box) {
  std::int64_t n = 1;
  for (std::size_t d = 0; d < box.rank; ++d)
    if (__builtin_mul_overflow(n, box.sizes[d], &n)) return std::nullopt;
  return n;
}

bool overlap(const BoxView& a, const BoxView& b) {
  for (std::size_t d = 0; d < a.rank; ++d)
    if (a.offsets[d] >= b.offsets[d] + b.sizes[d] || b.offsets[d] >= a.offsets[d] + a.sizes[d])
      return false;
  return true;
}

// The dim to sweep along: sorted by their start there, a box can only overlap the boxes that
// start before it ends there. The common layouts cut one dim (shards, chunks, experts): that dim,
// found without sorting. Grids cut several: the dim whose starts take the most distinct values.
std::size_t sweep_dim(std::span<const BoxView> boxes, const std::vector<std::size_t>& nonempty,
                      std::size_t rank) {
  if (rank <= 1 || nonempty.size() <= 2) return 0;
  std::size_t varying = 0, last = 0;
  for (std::size_t d = 0; d < rank; ++d) {
    const std::int64_t first = boxes[nonempty.front()].offsets[d];
    for (std::size_t i : nonempty)
      if (boxes[i].offsets[d] != first) {
        ++varying;
        last = d;
        break;
      }
  }
  if (varying <= 1) return last;
  std::size_t best = 0, best_count = 0;
  std::vector<std::int64_t> starts(nonempty.size());
  for (std::size_t d = 0; d < rank; ++d) {
    for (std::size_t i = 0; i < nonempty.size(); ++i) starts[i] = boxes[nonempty[i]].offsets[d];
    std::sort(starts.begin(), starts.end());
    auto count =
        static_cast<std::size_t>(std::unique(starts.begin(), starts.end()) - starts.begin());
    if (count > best_count) best = d, best_count = count;
  }
  return best;
}

}  // namespace

std::optional<std::int64_t> checked_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape)
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  return n;
}

std::optional<TilingFault> find_tiling_fault(const Shape& shape, std::span<const BoxView> boxes) {
  using Kind = TilingFault::Kind;
  auto total = checked_numel(shape);
  if (!total) return TilingFault{Kind::kBadShape};
  const std::size_t rank = shape.size();
  std::vector<std::size_t> nonempty;
  nonempty.reserve(boxes.size());
  std::int64_t covered = 0;
  for (std::size_t i = 0; i < boxes.size(); ++i) {
    const BoxView& box = boxes[i];
    if (box.rank != rank) return TilingFault{Kind::kRank, i};
    for (std::size_t d = 0; d < rank; ++d)
      if (box.offsets[d] < 0 || box.sizes[d] < 0 || box.sizes[d] > shape[d] ||
          box.offsets[d] > shape[d] - box.sizes[d])
        return TilingFault{Kind::kOutside, i, 0, d};
    std::int64_t n = *box_numel(box);  // inside the tensor: no overflow
    if (n == 0) continue;
    nonempty.push_back(i);
    // Saturate: a sum past the total means an overlap, which the sweep reports.
    if (__builtin_add_overflow(covered, n, &covered)) covered = INT64_MAX;
  }
  const std::size_t sweep = sweep_dim(boxes, nonempty, rank);
  auto start = [&](std::size_t i) { return rank ? boxes[i].offsets[sweep] : 0; };
  auto end = [&](std::size_t i) {
    return rank ? boxes[i].offsets[sweep] + boxes[i].sizes[sweep] : 1;
  };
  std::vector<std::size_t>& order = nonempty;  // sorted in place: not needed in index order now
  auto before = [&](std::size_t a, std::size_t b) { return start(a) < start(b); };
  if (!std::is_sorted(order.begin(), order.end(), before))
    std::stable_sort(order.begin(), order.end(), before);
  std::optional<TilingFault> first_overlap;
  for (std::size_t i = 0; i < order.size(); ++i)
    for (std::size_t j = i + 1; j < order.size() && start(order[j]) < end(order[i]); ++j)
      if (overlap(boxes[order[i]], boxes[order[j]])) {
        auto [a, b] = std::minmax(order[i], order[j]);
        // The pair whose later box comes first in the caller's order: what a check in that order
        // would have found first.
        if (!first_overlap || b < first_overlap->second ||
            (b == first_overlap->second && a < first_overlap->first))
          first_overlap = TilingFault{Kind::kOverlap, a, b};
      }
  if (first_overlap) return first_overlap;
  if (covered != *total) return TilingFault{Kind::kHoles, 0, 0, 0, covered, *total};
  return std::nullopt;
}

std::optional<TilingFault> find_tiling_fault(const LogicalTensor& tensor) {
  std::vector<BoxView> boxes;
  boxes.reserve(tensor.fragments.size());
  for (const Fragment& f : tensor.fragments)
    boxes.push_back(
        BoxView{f.offsets.data(), f.source.shape.data(),
                f.offsets.size() == f.source.shape.size() ? f.offsets.size() : SIZE_MAX});
  return find_tiling_fault(tensor.shape, boxes);
}

}  // namespace ckptstream
