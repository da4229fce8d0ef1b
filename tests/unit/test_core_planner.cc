// The planner's one tiling check and torch.chunk arithmetic (plan/tiling.h, plan/views.h); the
// view operations themselves run end to end in test_exec.cc.
#include <doctest/doctest.h>

#include <vector>

#include "plan/tiling.h"
#include "plan/views.h"

using namespace ckptstream;

namespace {

struct Boxes {
  std::vector<Shape> offsets, sizes;
  void add(Shape at, Shape size) {
    offsets.push_back(std::move(at));
    sizes.push_back(std::move(size));
  }
  std::optional<TilingFault> fault(const Shape& shape) const {
    std::vector<BoxView> views;
    for (std::size_t i = 0; i < offsets.size(); ++i)
      views.push_back(BoxView{offsets[i].data(), sizes[i].data(), sizes[i].size()});
    return find_tiling_fault(shape, views);
  }
};

}  // namespace

TEST_CASE("tiling: exact grids pass; holes, overlaps, boxes outside and wrong ranks are named") {
  using Kind = TilingFault::Kind;
  Boxes grid;  // [6, 5] as a 3 x 2 grid of uneven boxes, plus an empty one
  for (std::int64_t r : {0, 2, 4})
    for (auto [c, w] : {std::pair{0, 3}, {3, 2}}) grid.add({r, c}, {2, w});
  grid.add({6, 0}, {0, 5});
  CHECK(!grid.fault({6, 5}));

  Boxes holes = grid;
  holes.offsets.erase(holes.offsets.begin() + 3);
  holes.sizes.erase(holes.sizes.begin() + 3);
  auto hole = holes.fault({6, 5});
  REQUIRE(hole);
  CHECK(hole->kind == Kind::kHoles);
  CHECK(hole->covered == 26);
  CHECK(hole->total == 30);

  Boxes overlaps = grid;
  overlaps.add({1, 2}, {1, 2});  // inside boxes 0 and 1
  auto overlap = overlaps.fault({6, 5});
  REQUIRE(overlap);
  CHECK(overlap->kind == Kind::kOverlap);
  CHECK(overlap->first == 0);
  CHECK(overlap->second == 7);

  Boxes outside = grid;
  outside.sizes[5] = {2, 3};  // columns 3..6 of 5
  auto out = outside.fault({6, 5});
  REQUIRE(out);
  CHECK(out->kind == Kind::kOutside);
  CHECK(out->first == 5);
  CHECK(out->dim == 1);

  Boxes rank;
  rank.add({0}, {6});
  CHECK(rank.fault({6, 5})->kind == Kind::kRank);
  CHECK(Boxes{}.fault({-1})->kind == Kind::kBadShape);
  CHECK(!Boxes{}.fault({0, 4}));  // nothing to cover
  Boxes scalar;
  scalar.add({}, {});
  CHECK(!scalar.fault({}));
  Boxes twice = scalar;
  twice.add({}, {});
  CHECK(twice.fault({})->kind == Kind::kOverlap);
}

TEST_CASE("chunk_range is torch.chunk: ceil-sized pieces, the trailing ones short or empty") {
  auto lengths = [](std::int64_t size, std::int64_t pieces) {
    std::vector<std::int64_t> out;
    std::int64_t next = 0;
    for (std::int64_t i = 0; i < pieces; ++i) {
      ChunkRange range = chunk_range(size, pieces, i);
      CHECK(range.begin == std::min(next, size));
      next = range.begin + range.length;
      out.push_back(range.length);
    }
    CHECK(next == size);
    return out;
  };
  CHECK(lengths(10, 4) == std::vector<std::int64_t>{3, 3, 3, 1});
  CHECK(lengths(5, 3) == std::vector<std::int64_t>{2, 2, 1});
  CHECK(lengths(6, 4) == std::vector<std::int64_t>{2, 2, 2, 0});
  CHECK(lengths(2, 4) == std::vector<std::int64_t>{1, 1, 0, 0});
  CHECK(lengths(0, 3) == std::vector<std::int64_t>{0, 0, 0});

  // Shard(0) then Shard(1) of a [10, 7] tensor over a 4 x 2 mesh, at coordinate (3, 1).
  const std::size_t dims[] = {0, 1};
  const std::int64_t pieces[] = {4, 2}, coord[] = {3, 1};
  ShardBox box = shard_grid({10, 7}, dims, pieces, coord);
  CHECK(box.offsets == Shape{9, 4});
  CHECK(box.shape == Shape{1, 3});
  // Shard(0) twice (a 2-d mesh over one dim): the second cuts what the first left.
  const std::size_t same[] = {0, 0};
  const std::int64_t at[] = {1, 1};
  box = shard_grid({10, 7}, same, pieces, at);
  CHECK(box.offsets == Shape{3 + 2, 0});
  CHECK(box.shape == Shape{1, 7});
}
