// Reader of the zip container that torch.save writes (torch.md §1.3). Only what a torch archive
// needs: the central directory, with zip64 sizes and offsets, and the data offset of each STORED
// entry. No payload is read into memory; callers get byte ranges.
//
// Layout, all integers little-endian:
//
//   [local header 1][data 1][data descriptor 1] ... [central directory] [zip64 EOCD]
//   [zip64 EOCD locator] [EOCD]
//
//   EOCD (22 bytes + comment): 50 4B 05 06, disk(2), cd disk(2), entries on disk(2),
//     entries(2), cd size(4), cd offset(4), comment length(2), comment.
//   Zip64 EOCD locator (20 bytes, right before the EOCD): 50 4B 06 07, disk(4),
//     zip64 EOCD offset(8), disks(4).
//   Zip64 EOCD (56 bytes): 50 4B 06 06, record size(8), made by(2), needed(2), disk(4),
//     cd disk(4), entries on disk(8), entries(8), cd size(8), cd offset(8).
//     torch always writes it; its values win over the classic EOCD's (which may be 0xFFFF...).
//   Central directory entry (46 bytes + name + extra + comment): 50 4B 01 02, made by(2),
//     needed(2), flags(2), method(2), time(2), date(2), crc32(4), compressed size(4),
//     uncompressed size(4), name length(2), extra length(2), comment length(2), disk(2),
//     internal attrs(2), external attrs(4), local header offset(4).
//     A size or offset of 0xFFFFFFFF is in the zip64 extra field (id 0x0001), which holds, in
//     this order and only for the overflowing fields: uncompressed size(8), compressed size(8),
//     local header offset(8).
//   Local header (30 bytes + name + extra): 50 4B 03 04, needed(2), flags(2), method(2),
//     time(2), date(2), crc32(4), sizes(4+4), name length(2), extra length(2). torch leaves
//     CRC and sizes 0 (data descriptor flag) and pads with an "FB" extra field so that the data
//     is 64-byte aligned, so the local extra differs from the central one: the data starts at
//     local offset + 30 + local name length + local extra length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ckptstream/result.h"

namespace ckptstream::zip {

struct Entry {
  std::string name;
  std::uint16_t method = 0;  // 0 = STORED, 8 = DEFLATE, ...
  std::uint32_t crc32 = 0;   // 0 when the writer disabled CRCs
  std::uint64_t size = 0;    // uncompressed size
  std::uint64_t compressed_size = 0;
  std::uint64_t local_header_offset = 0;
  std::uint64_t data_offset = 0;  // first byte of the (stored) data
  bool is_stored() const { return method == 0; }
};

// Reads exactly out.size() bytes at `offset` (an error otherwise).
using ReadAt = std::function<Status(std::uint64_t offset, std::span<std::byte> out)>;
// Reads from bytes in memory (an error past their end).
ReadAt read_from(std::span<const std::byte> bytes);
// Announces reads of [offset, offset+length) about to come (may do nothing).
using WillRead = std::function<void(std::uint64_t offset, std::uint64_t length)>;

// How the local headers (one per entry, scattered over the file) are read. By default every
// one: the data offsets are then what the file says. With `sample` set, only that many (the
// first, the last and evenly spaced ones): when each of them matches torch's layout rule for one
// alignment A (64 by default) — the data starts at the first multiple of A after the local
// header, the name, the zip64 extra field torch writes for sizes or offsets >= 2^32 - 1, and
// the 4-byte header of the "FB" padding field — the other offsets are computed by that rule, and
// otherwise all headers are read. For a plan that reads no data: on a cold cache the headers of
// a 1.3 TB checkpoint are 726 608 random reads. A merge reads every header.
struct LocalHeaders {
  WillRead will_read;      // announces header reads about to come (may be empty)
  std::size_t sample = 0;  // 0: read every header
};

class Archive {
 public:
  // Parses the archive whose bytes are `bytes` (offsets are relative to bytes[0]). `label` names
  // the file in error messages.
  static Result<Archive> parse(std::span<const std::byte> bytes, std::string label);
  // The same for an archive of `size` bytes read through `read` (positional reads of a file:
  // only the end records, the central directory and each local header are read).
  static Result<Archive> parse(std::uint64_t size, const ReadAt& read, std::string label,
                               const LocalHeaders& headers = {});

  Archive(Archive&&) = default;  // moves entries_' heap buffer: index_'s views stay valid
  Archive& operator=(Archive&&) = default;
  Archive(const Archive&) = delete;  // index_ views the names of entries_
  Archive& operator=(const Archive&) = delete;

  const std::vector<Entry>& entries() const { return entries_; }
  // Entries whose data offset was computed from sampled headers, not read (LocalHeaders).
  std::size_t computed_offsets() const { return computed_offsets_; }
  const std::string& label() const { return label_; }

  // The entry of that name (the first, if several), or nullptr. The first few calls scan the
  // entries; later ones use a hash index built then (a rank file of 45 000 records is asked for
  // data.pkl and byteorder, near the front, and no more). Not for concurrent use.
  const Entry* find(std::string_view name) const;

  // The entry of that name, which must exist and be STORED; errors name the file and the entry.
  Result<const Entry*> stored(std::string_view name) const;

 private:
  Archive() = default;
  std::string label_;
  std::vector<Entry> entries_;
  std::size_t computed_offsets_ = 0;
  mutable std::unordered_map<std::string_view, std::size_t> index_;  // views of entries_' names
  mutable std::size_t scans_ = 0;
};

}  // namespace ckptstream::zip
