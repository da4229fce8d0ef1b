// Produces one logical tensor's output bytes: window by window of its flat index, the fragments'
// lines are gathered from the inputs (source dtype), converted to the output dtype, hashed and
// handed to a sink (the output file's writer, a hasher only, or a caller's visitor: executor.h).
// A sink may offer room for the output bytes (the file writer's buffer, file_writer.h): they are
// then produced there, and a tensor that needs no conversion is read from the inputs straight
// into it; otherwise they are produced in the worker's window buffer. A tensor with a LoRA delta
// (plan.h) is fused on the way: W's window is widened to float32, B @ A for the window's elements
// is added, and the sum is cast to the output dtype. Memory per worker, whatever the tensor's
// size: the window buffer (ExecOptions::buffer_bytes; untouched when nothing is converted) plus
// the write buffers (half as much, file_writer.h) plus the gather scratch (at most
// buffer_bytes, only for strided views) plus 64 KiB; with a LoRA delta also A and B in float32
// (at most kMaxLoraFactorBytes).
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
#include "exec/file_writer.h"
#include "exec/fragment_geometry.h"
#include "exec/record_check.h"
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
              const std::atomic<bool>* stop_flag = nullptr,
              RecordChecker* record_checker = nullptr);

  std::span<const InputFile> inputs;
  ExecOptions options;
  std::size_t window_capacity;  // bytes of `window`
  std::unique_ptr<std::byte[]> window;
  GatherBuffers gather;
  WriteBuffers write_buffers;     // for the output files this worker writes
  ProgressCounter* progress;      // may be null
  const std::atomic<bool>* stop;  // set when another worker failed; may be null
  RecordChecker* records;         // the execution's zip CRC checks (record_check.h); may be null
};

// Receives a tensor's bytes in order: `offset` is the byte position of `bytes` in the tensor.
using WindowSink = std::function<Status(std::uint64_t offset, std::span<const std::byte> bytes)>;

// A WindowSink that may say where it wants the bytes.
class TensorSink {
 public:
  // Memory for the next window's output bytes, so that they need not be copied (at least
  // WriteBuffers::kMaxElementBytes long), or empty: then they are produced in the window buffer.
  virtual std::span<std::byte> room() { return {}; }
  // The next bytes, at byte `offset` of the tensor: at room().data() when room() was not empty,
  // unless they were made elsewhere (LoRA fusion works in the window; the sink copies them).
  virtual Status take(std::uint64_t offset, std::span<const std::byte> bytes) = 0;

 protected:
  ~TensorSink() = default;
};

class TensorStream {
 public:
  // `tensor` must have passed check_tensor (plan_check.h).
  TensorStream(const LogicalTensor& tensor, ExecContext& context);

  // Passes every window of the tensor's output bytes to `sink`; returns their XXH3-128 in hex.
  Result<std::string> run(TensorSink& sink);
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
  // A block-quantized fragment's elements of [begin, end) as float32 (BlockScaleRef).
  Status gather_dequantized(const Source& source, std::int64_t first, std::int64_t last,
                            std::int64_t begin, std::int64_t end, std::byte* window);
  void release_inputs(std::int64_t written_end, bool finished);
  std::uint64_t file_byte(const Source& source, std::int64_t element) const;

  const LogicalTensor& tensor_;
  ExecContext& context_;
  std::vector<Source> sources_;  // the non-empty fragments
  std::int64_t numel_;
  std::size_t source_size_;
  std::size_t output_size_;
  std::unique_ptr<LoraFactors> lora_;  // loaded by run() when the tensor has a delta
  // Block scales read so far, per BlockScaleRef (a tensor's fragments share one).
  std::vector<std::pair<const BlockScaleRef*, std::vector<float>>> scales_;
  std::vector<std::byte> stored_;  // a window's stored 8-bit values
};

}  // namespace ckptstream
