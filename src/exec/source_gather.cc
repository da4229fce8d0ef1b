#include "exec/source_gather.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/crc32.h"
#include "exec/dtype_convert.h"

namespace ckptstream {
namespace {

// Reads the file range starting at `offset` into the iovecs, in order, resuming short reads.
Status read_scatter(const InputFile& file, std::uint64_t offset, std::vector<iovec>& iov) {
  std::size_t first = 0;
  while (first < iov.size()) {
    int count = static_cast<int>(std::min(iov.size() - first, GatherBuffers::kMaxIovecs));
    ssize_t n = ::preadv(file.fd(), iov.data() + first, count, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error(file.path().string() + ": read failed: " + std::strerror(errno));
    }
    if (n == 0) return invalid_input(file.path().string() + ": file shrank while reading");
    auto done = static_cast<std::size_t>(n);
    offset += done;
    while (first < iov.size() && done >= iov[first].iov_len) done -= iov[first++].iov_len;
    if (done > 0) {
      iov[first].iov_base = static_cast<std::byte*>(iov[first].iov_base) + done;
      iov[first].iov_len -= done;
    }
  }
  return {};
}

constexpr std::size_t kMaxTile = 16;

// How many lines from `first` on land in neighbouring destination columns (a transposed view:
// consecutive source rows are consecutive destination columns), up to kMaxTile.
std::size_t tile_width(const std::vector<Line>& lines, std::size_t first) {
  const Line& a = lines[first];
  std::size_t width = 1;
  while (width < kMaxTile && first + width < lines.size()) {
    const Line& b = lines[first + width];
    if (b.dst != a.dst + static_cast<std::int64_t>(width) || b.count != a.count ||
        b.src_stride != a.src_stride || b.dst_stride != a.dst_stride || a.dst_stride == 1)
      break;
    ++width;
  }
  return width;
}

template <std::size_t kSize>
void copy_tile_fixed(std::byte* dst, std::int64_t dst_step, const std::byte* const* sources,
                     std::int64_t src_step, std::size_t width, std::int64_t count) {
  for (std::int64_t k = 0; k < count; ++k) {
    for (std::size_t m = 0; m < width; ++m)
      std::memcpy(dst + k * dst_step + m * kSize, sources[m] + k * src_step, kSize);
  }
}

// Copies `width` lines of `count` elements of `size` bytes; line m is read from sources[m] and
// lands at dst + m*size. Steps are in bytes. Walking the lines side by side turns a transposing
// scatter (one cache line per element) into writes of `width` neighbouring elements.
void copy_tile(std::byte* dst, std::int64_t dst_step, const std::byte* const* sources,
               std::int64_t src_step, std::size_t width, std::int64_t count, std::size_t size) {
  auto isize = static_cast<std::int64_t>(size);
  if (width == 1 && dst_step == isize && src_step == isize) {
    std::memcpy(dst, sources[0], static_cast<std::size_t>(count) * size);
    return;
  }
  switch (size) {
    case 1:
      return copy_tile_fixed<1>(dst, dst_step, sources, src_step, width, count);
    case 2:
      return copy_tile_fixed<2>(dst, dst_step, sources, src_step, width, count);
    case 4:
      return copy_tile_fixed<4>(dst, dst_step, sources, src_step, width, count);
    case 8:
      return copy_tile_fixed<8>(dst, dst_step, sources, src_step, width, count);
    default:
      for (std::int64_t k = 0; k < count; ++k)
        for (std::size_t m = 0; m < width; ++m)
          std::memcpy(dst + k * dst_step + m * size, sources[m] + k * src_step, size);
  }
}

}  // namespace

GatherBuffers::GatherBuffers(std::size_t scratch_bytes)
    : scratch_capacity_(std::max<std::size_t>(scratch_bytes, 64)),
      junk_(std::make_unique_for_overwrite<std::byte[]>(kMaxGap)) {}

std::byte* GatherBuffers::scratch() {
  if (!scratch_) scratch_ = std::make_unique_for_overwrite<std::byte[]>(scratch_capacity_);
  return scratch_.get();
}

SourceGather::SourceGather(const InputFile& file, const TensorRef& view, GatherBuffers& buffers,
                           std::byte* window, std::int64_t window_begin, RecordChecker* records)
    : file_(file),
      view_(view),
      buffers_(buffers),
      window_(window),
      window_begin_(window_begin),
      records_(view.has_crc32 ? records : nullptr),
      element_size_(element_size(view.dtype)) {
  buffers_.lines().clear();
}

bool SourceGather::is_direct(const Line& line) const {
  return line.count == 1 || (line.src_stride == 1 && line.dst_stride == 1);
}

std::byte* SourceGather::destination(std::int64_t dst) const {
  return window_ + static_cast<std::size_t>(dst - window_begin_) * element_size_;
}

std::uint64_t SourceGather::source_byte(std::int64_t src) const {
  return view_.storage_begin + static_cast<std::uint64_t>(src) * element_size_;
}

Status SourceGather::add(const Line& line) {
  if (line.count <= 0) return {};
  bool direct = is_direct(line);
  auto span_elements = (line.count - 1) * line.src_stride + 1;
  auto capacity = static_cast<std::int64_t>(buffers_.scratch_capacity() / element_size_);
  if (direct || span_elements <= capacity) return add_piece(line, direct);
  // A strided line wider than the scratch buffer: split it into pieces that fit.
  std::int64_t per_piece = line.src_stride == 0 ? line.count : (capacity - 1) / line.src_stride + 1;
  for (std::int64_t k = 0; k < line.count; k += per_piece) {
    Line piece{line.src + k * line.src_stride, line.dst + k * line.dst_stride,
               std::min(per_piece, line.count - k), line.src_stride, line.dst_stride};
    CKPT_TRY(add_piece(piece, false));
  }
  return {};
}

Status SourceGather::add_piece(const Line& line, bool direct) {
  std::uint64_t begin = source_byte(line.src);
  std::uint64_t end = source_byte(line.src + (line.count - 1) * line.src_stride) + element_size_;
  auto& lines = buffers_.lines();
  if (!lines.empty()) {
    // A direct read skips a gap by reading it into the junk buffer: worth it only when the gap
    // is small next to the line. A scratch read gathers many lines at once (transposing them in
    // tiles), which pays for reading larger gaps from the page cache.
    std::uint64_t max_gap = direct ? std::clamp<std::uint64_t>(end - begin, GatherBuffers::kMinGap,
                                                               GatherBuffers::kMaxGap)
                                   : GatherBuffers::kMaxGap;
    bool joins = direct == group_direct_ && begin >= group_end_ && begin - group_end_ <= max_gap &&
                 lines.size() < GatherBuffers::kMaxLines &&
                 (direct || end - group_begin_ <= buffers_.scratch_capacity());
    if (!joins) CKPT_TRY(flush());
  }
  if (lines.empty()) {
    group_direct_ = direct;
    group_begin_ = group_end_ = begin;
  }
  lines.push_back(line);
  group_end_ = std::max(group_end_, end);
  return {};
}

Status SourceGather::flush() {
  if (buffers_.lines().empty()) return {};
  CKPT_TRY(group_direct_ ? read_direct() : read_through_scratch());
  if (view_.byteswap) byteswap_lines();
  buffers_.lines().clear();
  return {};
}

Status SourceGather::read_direct() {
  auto& iov = buffers_.iovecs();
  iov.clear();
  std::uint64_t position = group_begin_;
  for (const Line& line : buffers_.lines()) {
    std::uint64_t begin = source_byte(line.src);
    if (begin > position) iov.push_back({buffers_.junk(), begin - position});
    std::size_t bytes = static_cast<std::size_t>(line.count) * element_size_;
    iov.push_back({destination(line.dst), bytes});
    position = begin + bytes;
  }
  CKPT_TRY(read_scatter(file_, group_begin_, iov));
  if (!records_) return {};
  // Each line's bytes, where they landed (before any byte swap); the gaps went to the junk
  // buffer, one over the other: they are covered by other reads, or by the checker's finish().
  auto& pieces = buffers_.pieces();
  pieces.clear();
  for (const Line& line : buffers_.lines()) {
    std::uint64_t begin = source_byte(line.src) - view_.storage_begin;
    std::size_t bytes = static_cast<std::size_t>(line.count) * element_size_;
    pieces.push_back(
        {begin, begin + bytes, crc32_update(0, std::span(destination(line.dst), bytes))});
  }
  return records_->add(view_, pieces);
}

Status SourceGather::read_through_scratch() {
  std::byte* scratch = buffers_.scratch();
  CKPT_TRY(file_.read_at(group_begin_, {scratch, group_end_ - group_begin_}));
  if (records_) {
    RecordPiece piece{group_begin_ - view_.storage_begin, group_end_ - view_.storage_begin,
                      crc32_update(0, std::span(scratch, group_end_ - group_begin_))};
    CKPT_TRY(records_->add(view_, std::span(&piece, 1)));
  }
  auto size = static_cast<std::int64_t>(element_size_);
  const std::vector<Line>& lines = buffers_.lines();
  for (std::size_t i = 0; i < lines.size();) {
    const Line& line = lines[i];
    std::size_t tile = tile_width(lines, i);
    const std::byte* sources[kMaxTile];
    for (std::size_t m = 0; m < tile; ++m)
      sources[m] = scratch + (source_byte(lines[i + m].src) - group_begin_);
    copy_tile(destination(line.dst), line.dst_stride * size, sources, line.src_stride * size, tile,
              line.count, element_size_);
    i += tile;
  }
  return {};
}

void SourceGather::byteswap_lines() {
  for (const Line& line : buffers_.lines()) {
    if (line.dst_stride == 1) {
      byteswap_elements(view_.dtype, destination(line.dst), static_cast<std::size_t>(line.count));
      continue;
    }
    for (std::int64_t k = 0; k < line.count; ++k)
      byteswap_elements(view_.dtype, destination(line.dst + k * line.dst_stride), 1);
  }
}

}  // namespace ckptstream
