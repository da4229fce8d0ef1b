// Produces one logical tensor's output bytes: window by window of its flat index, the fragments'
// lines are gathered from the inputs into the window buffer (source dtype), converted to the
// output dtype, hashed and handed to a sink (a pwrite into the staged file, a hasher only, or a
// caller's visitor: executor.h). A tensor with a LoRA delta (plan.h) is fused on the way:
// W's window is widened to float32, B @ A for the window's elements is added, and the sum is
// cast to the output dtype. Memory: the window buffer (ExecOptions::buffer_bytes) plus the
// gather scratch (at most as much again, only for strided views) plus 64 KiB, whatever the
// tensor's size; with a LoRA delta also A and B in float32 (at most kMaxLoraFactorBytes).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "exec/executor.h"
#include "exec/fragment_geometry.h"
#include "exec/source_gather.h"
#include "io/input_file.h"

namespace ckptstream {

// The largest A plus B of one LoRA delta, as float32 (A [r, in] and B [out, r] are held whole).
inline constexpr std::uint64_t kMaxLoraFactorBytes = 256ull << 20;

// Bytes done over every worker of one execution: ExecOptions::on_progress is called with the
// running total after each window, one call at a time whatever the thread.
class ProgressCounter {
 public:
  ProgressCounter(const ExecOptions& options, std::uint64_t total)
      : callback_(options.on_progress), total_(total) {}
  void add(std::uint64_t bytes);

 private:
  const std::function<void(std::uint64_t, std::uint64_t)>& callback_;
  std::mutex mutex_;
  std::uint64_t done_ = 0;
  std::uint64_t total_;
};

// What every tensor one worker streams shares: inputs, that worker's options (its share of the
// buffers) and buffers, the execution's progress and its stop flag.
struct ExecContext {
  ExecContext(std::span<const InputFile> input_files, ExecOptions worker_options,
              ProgressCounter* progress_counter = nullptr,
              const std::atomic<bool>* stop_flag = nullptr);

  std::span<const InputFile> inputs;
  ExecOptions options;
  std::size_t window_capacity;  // bytes of `window`
  std::unique_ptr<std::byte[]> window;
  GatherBuffers gather;
  ProgressCounter* progress;      // may be null
  const std::atomic<bool>* stop;  // set when another worker failed; may be null
};

// Receives a tensor's bytes in order: `offset` is the byte position of `bytes` in the tensor.
using WindowSink = std::function<Status(std::uint64_t offset, std::span<const std::byte> bytes)>;

class TensorStream {
 public:
  // `tensor` must have passed check_tensor (plan_check.h).
  TensorStream(const LogicalTensor& tensor, ExecContext& context);

  // Passes every window of the tensor's output bytes to `sink`; returns their XXH3-128 in hex.
  Result<std::string> run(const WindowSink& sink);

 private:
  struct Source {
    const Fragment* fragment;
    FragmentGeometry geometry;
    std::uint64_t dropped_upto;  // file bytes of this fragment already dropped from the cache
  };
  // A and B of the LoRA delta, in float32.
  struct LoraFactors {
    std::vector<float> a_blocks;  // A by blocks of 16 columns: [ceil(in / 16)][r][16]
    std::vector<float> b;         // [out, r]
    std::int64_t rank;
    std::int64_t columns;  // in
    float scale;
  };
  Status load_lora();
  void add_lora(std::int64_t begin, std::int64_t end, float* values);
  Status gather_window(std::int64_t begin, std::int64_t end, std::byte* window);
  void release_inputs(std::int64_t written_end, bool finished);
  std::uint64_t file_byte(const Source& source, std::int64_t element) const;

  const LogicalTensor& tensor_;
  ExecContext& context_;
  std::vector<Source> sources_;  // the non-empty fragments
  std::int64_t numel_;
  std::size_t source_size_;
  std::size_t output_size_;
  std::unique_ptr<LoraFactors> lora_;  // loaded by run() when the tensor has a delta
};

}  // namespace ckptstream
