// Writes one output file front to back while its next bytes are being produced. The worker
// gathers, converts and hashes a tensor's bytes straight into the free room of an aligned
// buffer (TensorSink::room, tensor_writer.h); a full buffer goes to the file's I/O thread, which
// writes it (O_DIRECT where the file system allows: StagedFile) while the worker fills the next.
// So reading the inputs overlaps writing the output even for a model of a single file, and the
// bytes are copied once: from the inputs' page cache into the buffer the device reads from.
// Blocks are written in order, each exactly once; what the file holds does not depend on the
// buffer size or on how the writes interleave with the production.
#pragma once

#include <array>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>

#include "ckptstream/result.h"
#include "exec/staging.h"

namespace ckptstream {

// One worker's write buffers, reused from file to file: kCount buffers of budget / (2 kCount)
// bytes each, rounded down to whole StagedFile::kDirectAlign blocks (so that full buffers can be
// written with O_DIRECT) when that leaves at least one; smaller budgets (tests) give tiny buffers
// (at least kMaxElementBytes), written through the page cache. Each has kMaxElementBytes of slack
// past its end (a window may end in the middle of an element there). Allocated, aligned, on first
// use.
class WriteBuffers {
 public:
  static constexpr std::size_t kCount = 2;             // one filled while the other is written
  static constexpr std::size_t kMaxElementBytes = 16;  // complex128

  explicit WriteBuffers(std::size_t budget);
  std::size_t capacity() const { return capacity_; }
  std::byte* get(std::size_t index);

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::size_t capacity_;
  std::array<std::unique_ptr<std::byte, Free>, kCount> buffers_;
};

class FileWriter {
 public:
  // Writes `file` from byte 0 on; both must outlive the writer.
  FileWriter(StagedFile& file, WriteBuffers& buffers);
  ~FileWriter();  // without finish() (after a failure): unwritten blocks are dropped
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  // The file offset of the next byte.
  std::uint64_t position() const { return base_ + fill_; }
  // Memory for the bytes from position() on: at least kMaxElementBytes, and it ends at the
  // buffer's end or at most kMaxElementBytes past it (a window never outgrows the buffer).
  std::span<std::byte> room();
  // The first `size` bytes of room() are the file's next bytes.
  Status advance(std::size_t size);
  // Copies `bytes` in as the file's next bytes.
  Status append(std::span<const std::byte> bytes);
  // Zero bytes up to `offset` (what the preallocated file reads there anyway; safetensors leaves
  // no gaps between tensors, but a plan may).
  Status zero_fill_to(std::uint64_t offset);
  // Writes what is left, waits for every write and stops the I/O thread: the first error of any.
  Status finish();

 private:
  struct Block {
    std::size_t buffer;
    std::uint64_t offset;
    std::size_t size;
  };
  Status hand_over(std::size_t size);
  void submit(const Block& block);
  Status wait_until_free(std::size_t buffer);
  void write_blocks();  // the I/O thread
  void stop();

  StagedFile& file_;
  WriteBuffers& buffers_;
  std::size_t current_ = 0;  // the buffer being filled: file bytes [base_, base_ + fill_)
  std::uint64_t base_ = 0;
  std::size_t fill_ = 0;

  std::mutex mutex_;  // guards what follows; the I/O thread touches nothing else but file_
  std::condition_variable changed_;
  std::deque<Block> queue_;
  std::array<bool, WriteBuffers::kCount> in_flight_{};
  std::optional<Error> failure_;
  bool closing_ = false;
  bool abandoned_ = false;
  std::thread thread_;  // not joinable when none could be started: blocks are written inline
};

}  // namespace ckptstream
