// Asks the kernel to start reading the inputs an output file will need next, a fixed distance
// ahead of the worker (POSIX_FADV_WILLNEED). The worker reads synchronously, one window at a
// time and tensor after tensor, jumping between the rank files (output tensors are sorted by
// name, rank files are not): on a cold cache each jump used to wait for the disk while only
// the file writer kept it busy. With the next few windows already requested, reads are queued
// while the worker hashes and the disk serves reads and writes together. Pages asked for and
// not read yet are the inputs of at most `lookahead` bytes of output (and gaps under 64 KiB
// between them); read ones are dropped as before (TensorStream::release_inputs). Advice only:
// it changes no byte, and failures are ignored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "io/input_file.h"
#include "plan/plan.h"

namespace ckptstream {

class InputPrefetch {
 public:
  // `file` must have passed the plan checks (plan_check.h); both must outlive this.
  InputPrefetch(const OutputFile& file, std::span<const InputFile> inputs, std::uint64_t lookahead);

  // The worker is at tensor byte `data_offset` of the file (after the header): asks for the
  // inputs of the bytes up to data_offset + lookahead, in steps of half the lookahead.
  void advance(std::uint64_t data_offset);

 private:
  struct Range {
    std::uint64_t begin = 0;
    std::uint64_t end = 0;
  };
  static constexpr std::uint64_t kMaxGap = 64 << 10;  // read with a request rather than split it

  void request(const PlacedTensor& placed, std::int64_t begin, std::int64_t end);
  void add(std::size_t input, std::uint64_t begin, std::uint64_t end);
  void flush(std::size_t input);

  const OutputFile& file_;
  std::span<const InputFile> inputs_;
  std::uint64_t lookahead_;
  std::size_t tensor_ = 0;      // the first tensor not wholly requested
  std::int64_t element_ = 0;    // and its first element not requested
  std::uint64_t ahead_ = 0;     // tensor bytes requested: [0, ahead_) of the file's data
  std::vector<Range> pending_;  // per input: the request being gathered
};

}  // namespace ckptstream
