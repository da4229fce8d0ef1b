#include "exec/tensor_writer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "exec/dtype_convert.h"
#include "exec/manifest.h"

namespace ckptstream {
namespace {

constexpr std::size_t kRegionAlign = 16;  // each region of the window starts aligned
constexpr std::size_t kLoraBlock = 16;    // columns of B @ A computed together

std::byte* align_up(std::byte* p) {
  auto address = reinterpret_cast<std::uintptr_t>(p);
  return p + ((kRegionAlign - address % kRegionAlign) % kRegionAlign);
}

// `tensor`'s elements as float32 (torch's .float()), read through the context's window.
Result<std::vector<float>> read_as_f32(const LogicalTensor& tensor, ExecContext& context) {
  LogicalTensor as_f32 = tensor;
  as_f32.dtype = DType::kF32;
  as_f32.lora.reset();
  std::vector<float> values(static_cast<std::size_t>(numel(tensor.shape)));
  TensorStream stream(as_f32, context);
  auto hash = stream.run([&](std::uint64_t offset, std::span<const std::byte> bytes) -> Status {
    std::memcpy(reinterpret_cast<std::byte*>(values.data()) + offset, bytes.data(), bytes.size());
    return {};
  });
  if (!hash.ok()) return hash.error();
  return values;
}

// (B @ A)[row, 16 columns] from one block of the packed A (LoraFactors), summed in order of k
// in float32 with the running sums in registers: what `B @ A` gives with a GEMM that adds its
// products in order (torch 2.6's CPU GEMM did so on every fixture; another BLAS may differ in
// the last bit). A constant trip count, so that GCC's -O2 vectoriser takes the loops.
inline void lora_block_sums(const float* b_row, const float* block, std::int64_t rank,
                            float* sums) {
  constexpr std::size_t n = kLoraBlock;
  for (std::size_t j = 0; j < n; ++j) sums[j] = b_row[0] * block[j];
  for (std::int64_t k = 1; k < rank; ++k) {
    const float* a_k = block + k * static_cast<std::int64_t>(n);
    float b = b_row[k];
    for (std::size_t j = 0; j < n; ++j) sums[j] += b * a_k[j];
  }
}

}  // namespace

void ProgressCounter::add(std::uint64_t bytes) {
  std::lock_guard lock(mutex_);
  done_ += bytes;
  if (callback_) callback_(done_, total_);
}

ExecContext::ExecContext(std::span<const InputFile> input_files, ExecOptions worker_options,
                         ProgressCounter* progress_counter, const std::atomic<bool>* stop_flag,
                         RecordChecker* record_checker)
    : inputs(input_files),
      options(std::move(worker_options)),
      window_capacity(std::max<std::size_t>(options.buffer_bytes, 64)),
      window(std::make_unique_for_overwrite<std::byte[]>(window_capacity)),
      gather(options.buffer_bytes),
      write_buffers(options.buffer_bytes),
      progress(progress_counter),
      stop(stop_flag),
      records(record_checker) {}

TensorStream::TensorStream(const LogicalTensor& tensor, ExecContext& context)
    : tensor_(tensor),
      context_(context),
      numel_(numel(tensor.shape)),
      source_size_(element_size(tensor.source_dtype)),
      output_size_(element_size(tensor.dtype)) {
  for (const Fragment& fragment : tensor.fragments) {
    FragmentGeometry geometry(fragment, tensor.shape);
    if (geometry.numel() == 0) continue;
    std::uint64_t first_byte = fragment.source.storage_begin +
                               static_cast<std::uint64_t>(geometry.source_begin()) * source_size_;
    sources_.push_back({&fragment, std::move(geometry), first_byte});
  }
}

std::uint64_t TensorStream::file_byte(const Source& source, std::int64_t element) const {
  return source.fragment->source.storage_begin +
         static_cast<std::uint64_t>(element) * element_size(source.fragment->source.dtype);
}

namespace {

class FunctionSink final : public TensorSink {
 public:
  explicit FunctionSink(const WindowSink& sink) : sink_(sink) {}
  Status take(std::uint64_t offset, std::span<const std::byte> bytes) override {
    return sink_(offset, bytes);
  }

 private:
  const WindowSink& sink_;
};

}  // namespace

Result<std::string> TensorStream::run(const WindowSink& sink) {
  FunctionSink function_sink(sink);
  return run(function_sink);
}

Result<std::string> TensorStream::run(TensorSink& sink) {
  if (tensor_.lora && numel_ > 0) CKPT_TRY_CTX(load_lora(), "LoRA delta");
  bool fusing = lora_ != nullptr;
  // Regions, each `elements` long: the gathered source values; with a LoRA delta their float32
  // values (the gathered ones themselves when the source is float32); the output values when
  // they differ in dtype from what precedes them. The last is the output: in the sink's room
  // when it offers one (then a plain copy is read straight into it), except when fusing without
  // a conversion (add_lora works on aligned floats in the window); the others in the window.
  bool widening = fusing && tensor_.source_dtype != DType::kF32;
  DType produced_dtype = fusing ? DType::kF32 : tensor_.source_dtype;
  bool converting = produced_dtype != tensor_.dtype;
  std::size_t produced_size = element_size(produced_dtype);
  std::size_t all_regions =
      source_size_ + (widening ? produced_size : 0) + (converting ? output_size_ : 0);
  bool may_use_room = converting || !fusing;
  std::size_t window_room = context_.window_capacity - 2 * kRegionAlign;

  TensorHasher hasher;
  for (std::int64_t begin = 0; begin < numel_;) {
    std::span<std::byte> room = may_use_room ? sink.room() : std::span<std::byte>{};
    bool in_room = !room.empty();
    std::size_t in_window = all_regions - (in_room ? output_size_ : 0);  // bytes per element
    std::int64_t elements = numel_ - begin;
    if (in_window > 0)
      elements = std::min(elements, static_cast<std::int64_t>(window_room / in_window));
    if (in_room)
      elements = std::min(elements, static_cast<std::int64_t>(room.size() / output_size_));
    elements = std::max<std::int64_t>(elements, 1);
    std::int64_t end = begin + elements;
    auto count = static_cast<std::size_t>(elements);

    std::byte* next_free = context_.window.get();
    auto region = [&](std::size_t size, bool is_output) {
      if (is_output && in_room) return room.data();
      std::byte* start = align_up(next_free);
      next_free = start + count * size;
      return start;
    };
    std::byte* gathered = region(source_size_, !widening && !converting);
    std::byte* produced = widening ? region(produced_size, !converting) : gathered;
    std::byte* output = converting ? region(output_size_, true) : produced;

    CKPT_TRY(gather_window(begin, end, gathered));
    if (widening) convert_elements(tensor_.source_dtype, DType::kF32, gathered, produced, count);
    if (fusing) add_lora(begin, end, reinterpret_cast<float*>(produced));
    if (converting) {
      convert_elements_at(produced_dtype, tensor_.dtype, produced, output, count,
                          static_cast<std::size_t>(begin), static_cast<std::size_t>(numel_));
    }
    std::size_t bytes = count * output_size_;
    hasher.update(output, bytes);
    CKPT_TRY(sink.take(static_cast<std::uint64_t>(begin) * output_size_, {output, bytes}));
    release_inputs(end, end == numel_);
    begin = end;
  }
  return hasher.hex_digest();
}

// A [r, in] and B [out, r] whole, in float32; check_tensor (plan_check.h) vouched for shapes,
// dtypes and kMaxLoraFactorBytes.
Status TensorStream::load_lora() {
  const LoraDelta& delta = *tensor_.lora;
  auto factors = std::make_unique<LoraFactors>();
  factors->rank = delta.a.shape[0];
  factors->columns = delta.a.shape[1];
  // torch multiplies a float32 tensor by a Python float in float32.
  factors->scale = static_cast<float>(delta.scale);
  CKPT_ASSIGN_OR_RETURN(std::vector<float> a, read_as_f32(delta.a, context_));
  CKPT_ASSIGN_OR_RETURN(factors->b, read_as_f32(delta.b, context_));
  // Pack A by blocks of 16 columns, [block][k][16], zero-padded: the inner loops then read
  // contiguous memory (rows of A lie `in` floats apart, often a multiple of 4 KiB: L1 conflicts).
  const auto block_size = static_cast<std::int64_t>(kLoraBlock);
  std::int64_t blocks = (factors->columns + block_size - 1) / block_size;
  factors->a_blocks.assign(static_cast<std::size_t>(blocks * factors->rank * block_size), 0.0f);
  for (std::int64_t k = 0; k < factors->rank; ++k) {
    for (std::int64_t c = 0; c < factors->columns; ++c) {
      factors->a_blocks[static_cast<std::size_t>(
          ((c / block_size) * factors->rank + k) * block_size + c % block_size)] =
          a[static_cast<std::size_t>(k * factors->columns + c)];
    }
  }
  lora_ = std::move(factors);
  return {};
}

// values[i] += scale * (B @ A)[begin + i] for the window [begin, end) of W's flat index, row
// piece by row piece (a window may start or end inside a row), 16 columns at a time. The scale
// is applied last, as PEFT's `(B @ A) * scaling`.
void TensorStream::add_lora(std::int64_t begin, std::int64_t end, float* values) {
  const LoraFactors& f = *lora_;
  const auto block_size = static_cast<std::int64_t>(kLoraBlock);
  float sums[kLoraBlock];
  for (std::int64_t flat = begin; flat < end;) {
    std::int64_t row = flat / f.columns;
    std::int64_t first = flat % f.columns;
    std::int64_t last = std::min(f.columns, first + (end - flat));  // columns [first, last)
    const float* b_row = f.b.data() + row * f.rank;
    float* w = values + (flat - begin) - first;  // w[c] is column c of this row
    for (std::int64_t block = first / block_size; block * block_size < last; ++block) {
      lora_block_sums(b_row, f.a_blocks.data() + block * f.rank * block_size, f.rank, sums);
      std::int64_t from = std::max(first, block * block_size);
      std::int64_t to = std::min(last, (block + 1) * block_size);
      float* w_block = w + block * block_size;
      if (to - from == block_size) {
        for (std::size_t j = 0; j < kLoraBlock; ++j) w_block[j] += sums[j] * f.scale;
      } else {
        for (std::int64_t c = from; c < to; ++c) w[c] += sums[c - block * block_size] * f.scale;
      }
    }
    flat += last - first;
  }
}

Status TensorStream::gather_window(std::int64_t begin, std::int64_t end, std::byte* window) {
  for (const Source& source : sources_) {
    std::int64_t first = source.geometry.count_before(begin);
    std::int64_t last = source.geometry.count_before(end);
    if (first >= last) continue;
    const TensorRef& view = source.fragment->source;
    if (view.block_scale) {
      CKPT_TRY(gather_dequantized(source, first, last, begin, end, window));
      continue;
    }
    if (view.zeros) {
      source.geometry.for_each_line(first, last, [&](const Line& line) {
        auto at = [&](std::int64_t k) {
          return window +
                 static_cast<std::size_t>(line.dst + k * line.dst_stride - begin) * source_size_;
        };
        if (line.dst_stride == 1) {
          std::memset(at(0), 0, static_cast<std::size_t>(line.count) * source_size_);
          return;
        }
        for (std::int64_t k = 0; k < line.count; ++k) std::memset(at(k), 0, source_size_);
      });
      continue;
    }
    SourceGather gather(context_.inputs[view.input], view, context_.gather, window, begin,
                        context_.records);
    Status status;
    source.geometry.for_each_line(first, last, [&](const Line& line) {
      if (status.ok()) status = gather.add(line);
    });
    CKPT_TRY(status);
    CKPT_TRY(gather.finish());
  }
  return {};
}

namespace {

// float8_e4m3fn -> float32, exactly (every value is representable): sign, 4 exponent bits of
// bias 7, 3 mantissa bits; exponent 0 is subnormal; S.1111.111 is NaN (no infinities).
float e4m3fn_to_float(std::uint8_t bits) {
  int exponent = (bits >> 3) & 0xF;
  int mantissa = bits & 0x7;
  float magnitude;
  if (exponent == 0xF && mantissa == 0x7)
    magnitude = std::numeric_limits<float>::quiet_NaN();
  else if (exponent == 0)
    magnitude = std::ldexp(static_cast<float>(mantissa), -9);  // m/8 * 2^-6
  else
    magnitude = std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);  // (1 + m/8) 2^(e-7)
  return bits & 0x80 ? -magnitude : magnitude;
}

}  // namespace

Status TensorStream::gather_dequantized(const Source& source, std::int64_t first, std::int64_t last,
                                        std::int64_t begin, std::int64_t end, std::byte* window) {
  const TensorRef& view = source.fragment->source;
  const BlockScaleRef& scale = *view.block_scale;
  const std::vector<float>* grid = nullptr;
  for (const auto& [ref, values] : scales_)
    if (ref == &scale) grid = &values;
  if (!grid) {
    std::vector<float> values(static_cast<std::size_t>(scale.grid_rows * scale.grid_cols));
    CKPT_TRY(context_.inputs[scale.input].read_at(scale.storage_begin,
                                                  std::as_writable_bytes(std::span(values))));
    scales_.emplace_back(&scale, std::move(values));
    grid = &scales_.back().second;
  }
  static const std::array<float, 256> kValues = [] {
    std::array<float, 256> table{};
    for (int b = 0; b < 256; ++b) table[b] = e4m3fn_to_float(static_cast<std::uint8_t>(b));
    return table;
  }();
  // The stored 8-bit values, gathered as any view's bytes are (one byte per element of the
  // window), then each scaled by its block's factor into the float32 window.
  stored_.resize(static_cast<std::size_t>(end - begin));
  SourceGather gather(context_.inputs[view.input], view, context_.gather, stored_.data(), begin,
                      context_.records);
  Status status;
  source.geometry.for_each_line(first, last, [&](const Line& line) {
    if (status.ok()) status = gather.add(line);
  });
  CKPT_TRY(status);
  CKPT_TRY(gather.finish());
  source.geometry.for_each_line(first, last, [&](const Line& line) {
    for (std::int64_t k = 0; k < line.count; ++k) {
      std::int64_t s = line.src + k * line.src_stride;
      std::int64_t row = s / scale.weight_cols, col = s % scale.weight_cols;
      float factor = (*grid)[static_cast<std::size_t>((row / scale.block_rows) * scale.grid_cols +
                                                      col / scale.block_cols)];
      auto at = static_cast<std::size_t>(line.dst + k * line.dst_stride - begin);
      float value = kValues[static_cast<std::uint8_t>(stored_[at])] * factor;
      std::memcpy(window + at * 4, &value, 4);
    }
  });
  return status;
}

// Drops input pages that will not be read again: for fragments read front to back, everything
// before the next element to write, once the fragment's share of a writeback window has
// accumulated (a tensor of many shards would otherwise keep a window per shard cached: 8 x 256
// MiB for a large embedding of 8 ranks), but not less than 4 MiB (few calls); for the others
// (transposed views re-read their span every window), their whole span at the end.
void TensorStream::release_inputs(std::int64_t written_end, bool finished) {
  std::uint64_t window = context_.options.writeback_bytes;
  std::uint64_t share = std::max<std::uint64_t>(window / std::max<std::size_t>(sources_.size(), 1),
                                                std::min<std::uint64_t>(window, 4ull << 20));
  for (Source& source : sources_) {
    if (source.fragment->source.zeros) continue;  // no file
    std::uint64_t consumed = file_byte(source, source.geometry.source_end());
    if (!finished) {
      if (!source.geometry.reads_in_order()) continue;
      std::int64_t next = source.geometry.count_before(written_end);
      if (next < source.geometry.numel())
        consumed = file_byte(source, source.geometry.source_element(next));
      if (consumed - std::min(consumed, source.dropped_upto) < share) continue;
    }
    if (consumed <= source.dropped_upto) continue;
    const InputFile& file = context_.inputs[source.fragment->source.input];
    file.drop_cache(source.dropped_upto, consumed - source.dropped_upto);
    source.dropped_upto = consumed;
  }
}

}  // namespace ckptstream
