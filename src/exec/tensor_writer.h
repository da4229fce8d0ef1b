// Writes one logical tensor into a staged output file: window by window of its flat index, the
// fragments' lines are gathered from the inputs into the window buffer (source dtype), converted
// to the output dtype, hashed and written with one pwrite. Memory: the window buffer
// (ExecOptions::buffer_bytes) plus the gather scratch (at most as much again, only for strided
// views) plus 64 KiB, whatever the tensor's size.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "exec/executor.h"
#include "exec/fragment_geometry.h"
#include "exec/source_gather.h"
#include "exec/staging.h"
#include "io/input_file.h"

namespace ckptstream {

// What every tensor of one execution shares: inputs, options, buffers, progress.
struct ExecContext {
  ExecContext(std::span<const InputFile> input_files, const ExecOptions& exec_options,
              std::uint64_t total_bytes);

  std::span<const InputFile> inputs;
  const ExecOptions& options;
  std::size_t window_capacity;  // bytes of `window`
  std::unique_ptr<std::byte[]> window;
  GatherBuffers gather;
  std::uint64_t bytes_done = 0;
  std::uint64_t bytes_total;
};

class TensorWriter {
 public:
  // `tensor` must have passed check_tensor (plan_check.h).
  TensorWriter(const LogicalTensor& tensor, ExecContext& context);

  // Writes the tensor's bytes at byte `offset` of `out`; returns their XXH3-128 in hex.
  Result<std::string> write(StagedFile& out, std::uint64_t offset);

 private:
  struct Source {
    const Fragment* fragment;
    FragmentGeometry geometry;
    std::uint64_t dropped_upto;  // file bytes of this fragment already dropped from the cache
  };
  Status gather_window(std::int64_t begin, std::int64_t end, std::byte* window);
  void release_inputs(std::int64_t written_end, bool finished);
  std::uint64_t file_byte(const Source& source, std::int64_t element) const;

  const LogicalTensor& tensor_;
  ExecContext& context_;
  std::vector<Source> sources_;  // the non-empty fragments
  std::int64_t numel_;
  std::size_t source_size_;
  std::size_t output_size_;
};

}  // namespace ckptstream
