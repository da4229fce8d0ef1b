#include "exec/input_prefetch.h"

#include <fcntl.h>

#include <algorithm>

#include "exec/fragment_geometry.h"

namespace ckptstream {

InputPrefetch::InputPrefetch(const OutputFile& file, std::span<const InputFile> inputs,
                             std::uint64_t lookahead)
    : file_(file), inputs_(inputs), lookahead_(lookahead), pending_(inputs.size()) {}

void InputPrefetch::advance(std::uint64_t data_offset) {
  if (lookahead_ == 0 || ahead_ >= data_offset + lookahead_ / 2) return;
  std::uint64_t target = data_offset + lookahead_;
  while (ahead_ < target && tensor_ < file_.tensors.size()) {
    const PlacedTensor& placed = file_.tensors[tensor_];
    if (placed.data_begin >= target) break;
    std::uint64_t size = element_size(placed.tensor.dtype);
    std::int64_t count = numel(placed.tensor.shape);
    std::uint64_t from = std::max(ahead_, placed.data_begin);
    auto wanted = static_cast<std::int64_t>((target - from + size - 1) / size);
    std::int64_t end = std::min(count, element_ + wanted);
    request(placed, element_, end);
    element_ = end;
    ahead_ = placed.data_begin + static_cast<std::uint64_t>(end) * size;
    if (element_ == count) {
      ++tensor_;
      element_ = 0;
    }
  }
  for (std::size_t input = 0; input < pending_.size(); ++input) flush(input);
}

// The file bytes of each fragment's elements within the logical range [begin, end); a fragment
// read out of order (a transposed view re-reads its whole span) is asked for whole, once.
void InputPrefetch::request(const PlacedTensor& placed, std::int64_t begin, std::int64_t end) {
  const LogicalTensor& tensor = placed.tensor;
  std::uint64_t size = element_size(tensor.source_dtype);
  for (const Fragment& fragment : tensor.fragments) {
    if (fragment.source.zeros) continue;  // nothing to read
    FragmentGeometry geometry(fragment, tensor.shape);
    if (geometry.numel() == 0) continue;
    std::int64_t first_source = 0, last_source = 0;  // storage elements [first, last)
    if (geometry.reads_in_order()) {
      std::int64_t first = geometry.count_before(begin);
      std::int64_t last = geometry.count_before(end);
      if (first >= last) continue;
      first_source = geometry.source_element(first);
      last_source = geometry.source_element(last - 1) + 1;
    } else {
      if (begin != 0) continue;
      first_source = geometry.source_begin();
      last_source = geometry.source_end();
    }
    auto byte = [&](std::int64_t element) {
      return fragment.source.storage_begin + static_cast<std::uint64_t>(element) * size;
    };
    add(fragment.source.input, byte(first_source), byte(last_source));
  }
}

// Ranges of one input that follow each other closely (small tensors stored one after the other,
// zip headers between them) become one request: one syscall instead of one per fragment.
void InputPrefetch::add(std::size_t input, std::uint64_t begin, std::uint64_t end) {
  Range& range = pending_[input];
  if (range.end > range.begin && begin >= range.begin && begin <= range.end + kMaxGap) {
    range.end = std::max(range.end, end);
    return;
  }
  flush(input);
  range = {begin, end};
}

void InputPrefetch::flush(std::size_t input) {
  Range& range = pending_[input];
  if (range.end <= range.begin) return;
  ::posix_fadvise(inputs_[input].fd(), static_cast<off_t>(range.begin),
                  static_cast<off_t>(range.end - range.begin), POSIX_FADV_WILLNEED);
  range = {};
}

}  // namespace ckptstream
