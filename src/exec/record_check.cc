#include "exec/record_check.h"

#include <algorithm>
#include <cstdio>
#include <memory>

#include "core/crc32.h"

namespace ckptstream {
namespace {

std::string hex32(std::uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", value);
  return text;
}

}  // namespace

void RecordChecker::insert(OpenRecord& record, const RecordPiece& piece) {
  auto& pieces = record.pieces;
  // Read in order, the usual case: the piece continues the last one.
  if (!pieces.empty() && pieces.back().end == piece.begin) {
    RecordPiece& last = pieces.back();
    last.crc32 = crc32_combine(last.crc32, piece.crc32, piece.end - piece.begin);
    last.end = piece.end;
    return;
  }
  auto after =
      std::lower_bound(pieces.begin(), pieces.end(), piece.begin,
                       [](const RecordPiece& p, std::uint64_t at) { return p.begin < at; });
  // Bytes read twice (two views of one storage): the piece adds nothing that can be joined
  // exactly; what stays uncovered is read by finish().
  if (after != pieces.end() && after->begin < piece.end) return;
  if (after != pieces.begin() && std::prev(after)->end > piece.begin) return;
  after = pieces.insert(after, piece);
  if (auto next = std::next(after); next != pieces.end() && next->begin == after->end) {
    after->crc32 = crc32_combine(after->crc32, next->crc32, next->end - next->begin);
    after->end = next->end;
    after = std::prev(pieces.erase(next));
  }
  if (after != pieces.begin()) {
    auto previous = std::prev(after);
    if (previous->end == after->begin) {
      previous->crc32 = crc32_combine(previous->crc32, after->crc32, after->end - after->begin);
      previous->end = after->end;
      pieces.erase(after);
    }
  }
}

Status RecordChecker::check(const Key& key, const OpenRecord& record) const {
  const RecordPiece& whole = record.pieces.front();
  if (whole.crc32 == record.expected) return {};
  return invalid_input(inputs_[key.first].path().string() + ": the zip record at bytes [" +
                       std::to_string(key.second) + ", " +
                       std::to_string(key.second + record.size) + ") has CRC-32 " +
                       hex32(whole.crc32) + ", but the archive records " + hex32(record.expected) +
                       ": the file is damaged");
}

Status RecordChecker::add(const TensorRef& ref, std::span<const RecordPiece> pieces) {
  if (!ref.has_crc32 || pieces.empty()) return {};
  std::lock_guard lock(mutex_);
  Key key{ref.input, ref.storage_begin};
  auto [it, fresh] = open_.try_emplace(key);
  OpenRecord& record = it->second;
  if (fresh) {
    record.size = ref.storage_nbytes;
    record.expected = ref.crc32;
  }
  for (const RecordPiece& piece : pieces)
    if (piece.begin < piece.end && piece.end <= record.size) insert(record, piece);
  if (record.pieces.size() == 1 && record.pieces[0].begin == 0 &&
      record.pieces[0].end == record.size) {
    Status checked = check(key, record);
    open_.erase(it);
    return checked;
  }
  return {};
}

Status RecordChecker::finish() {
  std::lock_guard lock(mutex_);
  constexpr std::size_t kChunk = 1 << 20;
  std::unique_ptr<std::byte[]> buffer;
  for (auto& [key, record] : open_) {
    const InputFile& file = inputs_[key.first];
    // The gaps between the pieces, read and joined in.
    std::vector<RecordPiece> gaps;
    std::uint64_t at = 0;
    for (const RecordPiece& piece : record.pieces) {
      if (piece.begin > at) gaps.push_back({at, piece.begin, 0});
      at = piece.end;
    }
    if (at < record.size) gaps.push_back({at, record.size, 0});
    for (RecordPiece& gap : gaps) {
      if (!buffer) buffer = std::make_unique_for_overwrite<std::byte[]>(kChunk);
      for (std::uint64_t from = gap.begin; from < gap.end;) {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, gap.end - from));
        CKPT_TRY(file.read_at(key.second + from, std::span(buffer.get(), n)));
        gap.crc32 = crc32_update(gap.crc32, std::span(buffer.get(), n));
        from += n;
      }
      completion_bytes_ += gap.end - gap.begin;
      insert(record, gap);
    }
    CKPT_TRY(check(key, record));
  }
  open_.clear();
  return {};
}

}  // namespace ckptstream
