#include "exec/tensor_writer.h"

#include <algorithm>

#include "exec/dtype_convert.h"
#include "exec/manifest.h"

namespace ckptstream {

ExecContext::ExecContext(std::span<const InputFile> input_files, const ExecOptions& exec_options,
                         std::uint64_t total_bytes)
    : inputs(input_files),
      options(exec_options),
      window_capacity(std::max<std::size_t>(exec_options.buffer_bytes, 32)),
      window(std::make_unique_for_overwrite<std::byte[]>(window_capacity)),
      gather(exec_options.buffer_bytes),
      bytes_total(total_bytes) {}

TensorWriter::TensorWriter(const LogicalTensor& tensor, ExecContext& context)
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

std::uint64_t TensorWriter::file_byte(const Source& source, std::int64_t element) const {
  return source.fragment->source.storage_begin + static_cast<std::uint64_t>(element) * source_size_;
}

Result<std::string> TensorWriter::write(StagedFile& out, std::uint64_t offset) {
  TensorHasher hasher;
  bool converting = tensor_.source_dtype != tensor_.dtype;
  // The window holds `elements` source values, followed by their converted values if needed.
  std::size_t per_element = source_size_ + (converting ? output_size_ : 0);
  auto elements =
      static_cast<std::int64_t>(std::max<std::size_t>(1, context_.window_capacity / per_element));
  std::byte* gathered = context_.window.get();
  std::byte* converted =
      converting ? gathered + static_cast<std::size_t>(elements) * source_size_ : gathered;
  for (std::int64_t begin = 0; begin < numel_; begin += elements) {
    std::int64_t end = std::min(numel_, begin + elements);
    auto count = static_cast<std::size_t>(end - begin);
    CKPT_TRY(gather_window(begin, end, gathered));
    if (converting) {
      convert_elements_at(tensor_.source_dtype, tensor_.dtype, gathered, converted, count,
                          static_cast<std::size_t>(begin), static_cast<std::size_t>(numel_));
    }
    std::size_t bytes = count * output_size_;
    hasher.update(converted, bytes);
    CKPT_TRY(
        out.write_at(offset + static_cast<std::uint64_t>(begin) * output_size_, converted, bytes));
    release_inputs(end, end == numel_);
    context_.bytes_done += bytes;
    if (context_.options.on_progress)
      context_.options.on_progress(context_.bytes_done, context_.bytes_total);
  }
  return hasher.hex_digest();
}

Status TensorWriter::gather_window(std::int64_t begin, std::int64_t end, std::byte* window) {
  for (const Source& source : sources_) {
    std::int64_t first = source.geometry.count_before(begin);
    std::int64_t last = source.geometry.count_before(end);
    if (first >= last) continue;
    const TensorRef& view = source.fragment->source;
    SourceGather gather(context_.inputs[view.input], view, context_.gather, window, begin);
    Status status;
    source.geometry.for_each_line(first, last, [&](const Line& line) {
      if (status.ok()) status = gather.add(line);
    });
    CKPT_TRY(status);
    CKPT_TRY(gather.finish());
  }
  return {};
}

// Drops input pages that will not be read again: for fragments read front to back, everything
// before the next element to write, once a writeback window's worth has accumulated; for the
// others (transposed views re-read their span every window), their whole span at the end.
void TensorWriter::release_inputs(std::int64_t written_end, bool finished) {
  for (Source& source : sources_) {
    std::uint64_t consumed = file_byte(source, source.geometry.source_end());
    if (!finished) {
      if (!source.geometry.reads_in_order()) continue;
      std::int64_t next = source.geometry.count_before(written_end);
      if (next < source.geometry.numel())
        consumed = file_byte(source, source.geometry.source_element(next));
      if (consumed - std::min(consumed, source.dropped_upto) < context_.options.writeback_bytes)
        continue;
    }
    if (consumed <= source.dropped_upto) continue;
    const InputFile& file = context_.inputs[source.fragment->source.input];
    file.drop_cache(source.dropped_upto, consumed - source.dropped_upto);
    source.dropped_upto = consumed;
  }
}

}  // namespace ckptstream
