// Reads one fragment's lines (fragment_geometry.h) from its input file into a window buffer laid
// out like the logical tensor, and reports the CRC-32 of the bytes it read to the record checker
// (record_check.h). Lines that follow each other in the file with small gaps are
// read with one syscall: lines contiguous in source and destination by one preadv straight into
// the window (gaps land in a junk buffer); strided lines (transposed or sliced views) by one
// pread of their covering span into a bounded scratch buffer, then gathered in memory.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "ckptstream/result.h"
#include "exec/fragment_geometry.h"
#include "exec/record_check.h"
#include "io/input_file.h"

namespace ckptstream {

// Memory shared by every gather of one execution; bounded whatever the plan.
class GatherBuffers {
 public:
  static constexpr std::size_t kMinGap = 4 << 10;           // bytes a read may skip between lines
  static constexpr std::size_t kMaxGap = 64 << 10;          // (at most the line's size, clamped)
  static constexpr std::size_t kMaxIovecs = 1024;           // IOV_MAX on Linux
  static constexpr std::size_t kMaxLines = kMaxIovecs / 2;  // lines per read (a line + a gap each)

  explicit GatherBuffers(std::size_t scratch_bytes);
  std::size_t scratch_capacity() const { return scratch_capacity_; }
  std::byte* scratch();  // allocated on first use: contiguous plans never need it
  std::byte* junk() { return junk_.get(); }
  std::vector<Line>& lines() { return lines_; }
  std::vector<iovec>& iovecs() { return iovecs_; }
  std::vector<RecordPiece>& pieces() { return pieces_; }

 private:
  std::size_t scratch_capacity_;
  std::unique_ptr<std::byte[]> scratch_;
  std::unique_ptr<std::byte[]> junk_;
  std::vector<Line> lines_;
  std::vector<iovec> iovecs_;
  std::vector<RecordPiece> pieces_;
};

class SourceGather {
 public:
  // Lines land at window + (line.dst - window_begin) * element size. The CRC of what is read
  // goes to `records` (when not null and the view's record has one).
  SourceGather(const InputFile& file, const TensorRef& view, GatherBuffers& buffers,
               std::byte* window, std::int64_t window_begin, RecordChecker* records = nullptr);
  Status add(const Line& line);
  Status finish() { return flush(); }

 private:
  bool is_direct(const Line& line) const;
  Status add_piece(const Line& line, bool direct);
  Status flush();
  Status read_direct();
  Status read_through_scratch();
  void byteswap_lines();
  std::byte* destination(std::int64_t dst) const;
  std::uint64_t source_byte(std::int64_t src) const;

  const InputFile& file_;
  const TensorRef& view_;
  GatherBuffers& buffers_;
  std::byte* window_;
  std::int64_t window_begin_;
  RecordChecker* records_;  // null: nothing to check
  std::size_t element_size_;
  bool group_direct_ = false;
  std::uint64_t group_begin_ = 0;  // file bytes covered by the pending lines
  std::uint64_t group_end_ = 0;
};

}  // namespace ckptstream
