#include "zip/zip_archive.h"

#include <algorithm>
#include <cstring>
#include <optional>

namespace ckptstream::zip {
namespace {

constexpr std::uint32_t kLocalHeaderSig = 0x04034b50;
constexpr std::uint32_t kCentralSig = 0x02014b50;
constexpr std::uint32_t kEocdSig = 0x06054b50;
constexpr std::uint32_t kZip64EocdSig = 0x06064b50;
constexpr std::uint32_t kZip64LocatorSig = 0x07064b50;
constexpr std::size_t kEocdSize = 22;
constexpr std::size_t kZip64LocatorSize = 20;
constexpr std::size_t kZip64EocdSize = 56;
constexpr std::size_t kCentralSize = 46;
constexpr std::size_t kLocalSize = 30;
constexpr std::uint16_t kZip64ExtraId = 0x0001;

bool fits(std::uint64_t offset, std::uint64_t length, std::uint64_t size) {
  return offset <= size && length <= size - offset;
}

// Little-endian reads from a span whose bounds the caller has checked.
std::uint64_t le(std::span<const std::byte> bytes, std::size_t at, int width) {
  std::uint64_t v = 0;
  for (int i = width - 1; i >= 0; --i)
    v = (v << 8) | static_cast<std::uint8_t>(bytes[at + static_cast<std::size_t>(i)]);
  return v;
}
std::uint16_t u16(std::span<const std::byte> b, std::size_t at) {
  return static_cast<std::uint16_t>(le(b, at, 2));
}
std::uint32_t u32(std::span<const std::byte> b, std::size_t at) {
  return static_cast<std::uint32_t>(le(b, at, 4));
}
std::uint64_t u64(std::span<const std::byte> b, std::size_t at) {
  return le(b, at, 8);
}

struct Directory {
  std::uint64_t entries = 0;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
};

// Where torch's writer starts the padding so that the data is aligned (LocalHeaders): after the
// local header, the name, the zip64 extra field it writes for large sizes or offsets (id, length,
// then only the overflowing fields) and the 4-byte header of its "FB" padding field.
std::uint64_t unpadded_data_start(const Entry& e) {
  bool big_size = e.size >= 0xFFFFFFFF;
  bool big_offset = e.local_header_offset >= 0xFFFFFFFF;
  std::uint64_t zip64 = big_size || big_offset ? 4 + (big_size ? 16 : 0) + (big_offset ? 8 : 0) : 0;
  return e.local_header_offset + kLocalSize + e.name.size() + zip64 + 4;
}

std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// `count` entries of `n` (< n): a quarter at each end, the rest evenly spaced between; sorted.
std::vector<std::size_t> sample_indices(std::size_t n, std::size_t count) {
  std::vector<std::size_t> picks;
  std::size_t ends = std::max<std::size_t>(count / 4, 1);
  for (std::size_t i = 0; i < ends; ++i) picks.push_back(i);
  std::size_t middle = count > 2 * ends ? count - 2 * ends : 0;
  for (std::size_t k = 0; k < middle; ++k) picks.push_back(ends + (n - 2 * ends) * k / middle);
  for (std::size_t i = n - ends; i < n; ++i) picks.push_back(i);
  std::sort(picks.begin(), picks.end());
  picks.erase(std::unique(picks.begin(), picks.end()), picks.end());
  return picks;
}

class Parser {
 public:
  Parser(std::uint64_t size, const ReadAt& read, const LocalHeaders& headers,
         const std::string& label)
      : size_(size), read_(read), headers_(headers), label_(label) {}

  Result<std::vector<Entry>> run() {
    CKPT_ASSIGN_OR_RETURN(std::uint64_t eocd, find_eocd());
    CKPT_ASSIGN_OR_RETURN(Directory dir, read_directory_location(eocd));
    return read_entries(dir);
  }

  std::size_t computed_offsets() const { return computed_; }

 private:
  Error fail(const std::string& what) const { return invalid_input(label_ + ": zip: " + what); }

  // `length` bytes at `offset` (bounds checked by the caller) into buffer_, which the result views.
  Result<std::span<const std::byte>> view(std::uint64_t offset, std::size_t length) {
    buffer_.resize(length);
    CKPT_TRY(read_(offset, buffer_));
    return std::span<const std::byte>(buffer_);
  }

  Result<std::uint64_t> find_eocd() {
    if (size_ < kEocdSize)
      return fail("file too short (" + std::to_string(size_) +
                  " bytes) to hold an end-of-central-directory record (truncated?)");
    // The EOCD ends the file unless a comment (at most 65535 bytes) follows it; the zip64
    // locator sits right before it. torch.save writes no comment, so the last bytes are tried
    // first: the 64 KiB search window read for every item of a DCP checkpoint was mostly tensor
    // bytes (about 15% of a model's bytes read twice, once to plan).
    CKPT_ASSIGN_OR_RETURN(auto eocd, find_eocd_in_last(kEocdSize + kZip64LocatorSize, 0));
    if (eocd) return *eocd;
    CKPT_ASSIGN_OR_RETURN(eocd, find_eocd_in_last(kEocdSize + 0xFFFF + kZip64LocatorSize, 0xFFFF));
    if (eocd) return *eocd;
    return fail("no end-of-central-directory record (truncated or not a zip file)");
  }

  // Searches the last `window` bytes for an EOCD followed by a comment of at most `max_comment`
  // bytes that ends the file; keeps the window (tail_) for the zip64 locator before it.
  Result<std::optional<std::uint64_t>> find_eocd_in_last(std::uint64_t window,
                                                         std::size_t max_comment) {
    std::uint64_t tail = std::min<std::uint64_t>(size_, window);
    std::uint64_t base = size_ - tail;
    CKPT_ASSIGN_OR_RETURN(auto bytes, view(base, static_cast<std::size_t>(tail)));
    std::size_t last = bytes.size() - kEocdSize;
    std::size_t first = last > max_comment ? last - max_comment : 0;
    for (std::size_t at = last + 1; at-- > first;) {
      if (u32(bytes, at) != kEocdSig) continue;
      std::size_t comment = u16(bytes, at + 20);
      if (comment <= bytes.size() - at - kEocdSize) {
        tail_ = std::vector<std::byte>(bytes.begin(), bytes.end());
        tail_base_ = base;
        return std::optional<std::uint64_t>(base + at);
      }
    }
    return std::optional<std::uint64_t>();
  }

  Result<Directory> read_directory_location(std::uint64_t eocd) {
    std::span<const std::byte> tail(tail_);
    std::size_t e = static_cast<std::size_t>(eocd - tail_base_);
    Directory dir{u16(tail, e + 10), u32(tail, e + 16), u32(tail, e + 12)};
    if (e >= kZip64LocatorSize && u32(tail, e - kZip64LocatorSize) == kZip64LocatorSig) {
      std::uint64_t at = u64(tail, e - kZip64LocatorSize + 8);
      if (!fits(at, kZip64EocdSize, eocd - kZip64LocatorSize))
        return fail("zip64 end-of-central-directory locator points to offset " +
                    std::to_string(at) + ", where there is no zip64 record");
      CKPT_ASSIGN_OR_RETURN(auto record, view(at, kZip64EocdSize));
      if (u32(record, 0) != kZip64EocdSig)
        return fail("zip64 end-of-central-directory locator points to offset " +
                    std::to_string(at) + ", where there is no zip64 record");
      dir.entries = u64(record, 32);
      dir.size = u64(record, 40);
      dir.offset = u64(record, 48);
    }
    if (!fits(dir.offset, dir.size, size_))
      return fail("central directory [" + std::to_string(dir.offset) + ", +" +
                  std::to_string(dir.size) + ") lies outside the file of " + std::to_string(size_) +
                  " bytes (truncated?)");
    if (dir.entries > dir.size / kCentralSize)
      return fail("central directory of " + std::to_string(dir.size) + " bytes cannot hold " +
                  std::to_string(dir.entries) + " entries");
    return dir;
  }

  Result<std::vector<Entry>> read_entries(const Directory& dir) {
    CKPT_ASSIGN_OR_RETURN(auto cd, view(dir.offset, static_cast<std::size_t>(dir.size)));
    std::vector<std::byte> directory(cd.begin(), cd.end());
    directory_offset_ = dir.offset;
    std::vector<Entry> entries;
    entries.reserve(static_cast<std::size_t>(dir.entries));
    std::size_t at = 0;
    for (std::uint64_t i = 0; i < dir.entries; ++i) {
      CKPT_ASSIGN_OR_RETURN(Entry entry, read_entry(directory, at, i));
      entries.push_back(std::move(entry));
    }
    if (headers_.sample > 0 && entries.size() > headers_.sample) {
      CKPT_ASSIGN_OR_RETURN(bool computed, compute_from_sample(entries));
      if (computed) return entries;
    }
    std::vector<std::size_t> all(entries.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    announce(entries, all);
    for (Entry& entry : entries) CKPT_TRY(locate_data(entry));
    return entries;
  }

  // The local headers lie scattered over the file: ask for all of them before reading any.
  void announce(const std::vector<Entry>& entries, const std::vector<std::size_t>& which) const {
    if (!headers_.will_read) return;
    for (std::size_t i : which)
      if (entries[i].local_header_offset < size_)
        headers_.will_read(entries[i].local_header_offset, kLocalSize + entries[i].name.size());
  }

  // Reads the sampled local headers (LocalHeaders); when all of them follow torch's rule for one
  // alignment, computes the other entries' data offsets from it and returns true.
  Result<bool> compute_from_sample(std::vector<Entry>& entries) {
    std::vector<std::size_t> picks = sample_indices(entries.size(), headers_.sample);
    announce(entries, picks);
    for (std::size_t i : picks) CKPT_TRY(locate_data(entries[i]));
    auto follows = [&](std::uint64_t alignment) {
      return std::all_of(picks.begin(), picks.end(), [&](std::size_t i) {
        return entries[i].data_offset == align_up(unpadded_data_start(entries[i]), alignment);
      });
    };
    std::uint64_t alignment = 64;  // torch's default; others are configurable since torch 2.7
    for (std::uint64_t other = 1; !follows(alignment); other *= 2) {
      if (other > 0x8000) return false;  // not torch's layout: read every header
      alignment = other;
    }
    std::size_t next = 0;  // into picks, which is sorted
    for (std::size_t i = 0; i < entries.size(); ++i) {
      if (next < picks.size() && picks[next] == i) {
        ++next;
        continue;
      }
      Entry& e = entries[i];
      if (!fits(e.local_header_offset, kLocalSize + e.name.size(), size_))
        return fail("entry '" + e.name + "': no local header at offset " +
                    std::to_string(e.local_header_offset) + " (corrupt or truncated)");
      e.data_offset = align_up(unpadded_data_start(e), alignment);
      CKPT_TRY(check_data(e));
      ++computed_;
    }
    return true;
  }

  // Reads the central directory entry at `at` of `cd` (advanced past it).
  Result<Entry> read_entry(std::span<const std::byte> cd, std::size_t& at,
                           std::uint64_t index) const {
    auto where = [&] { return "central directory entry " + std::to_string(index); };
    if (!fits(at, kCentralSize, cd.size()) || u32(cd, at) != kCentralSig)
      return fail(where() + " at offset " + std::to_string(directory_offset_ + at) +
                  " is corrupt (bad signature)");
    std::size_t name_len = u16(cd, at + 28);
    std::size_t extra_len = u16(cd, at + 30);
    std::size_t comment_len = u16(cd, at + 32);
    std::size_t total = kCentralSize + name_len + extra_len + comment_len;
    if (!fits(at, total, cd.size()))
      return fail(where() + " runs past the end of the central directory");
    Entry e;
    e.name.assign(reinterpret_cast<const char*>(cd.data() + at + kCentralSize), name_len);
    e.method = u16(cd, at + 10);
    e.crc32 = u32(cd, at + 16);
    e.compressed_size = u32(cd, at + 20);
    e.size = u32(cd, at + 24);
    e.local_header_offset = u32(cd, at + 42);
    CKPT_TRY(apply_zip64_extra(e, cd.subspan(at + kCentralSize + name_len, extra_len)));
    at += total;
    return e;
  }

  // Replaces 0xFFFFFFFF fields by the values of the zip64 extra field, in the fixed order.
  Status apply_zip64_extra(Entry& e, std::span<const std::byte> extra) const {
    bool need_size = e.size == 0xFFFFFFFF;
    bool need_compressed = e.compressed_size == 0xFFFFFFFF;
    bool need_offset = e.local_header_offset == 0xFFFFFFFF;
    if (!need_size && !need_compressed && !need_offset) return {};
    std::size_t end = extra.size();
    for (std::size_t at = 0; at + 4 <= end;) {
      std::uint16_t id = u16(extra, at);
      std::size_t len = u16(extra, at + 2);
      if (len > end - at - 4) break;
      if (id == kZip64ExtraId) {
        std::size_t field = at + 4;
        std::size_t field_end = field + len;
        auto take = [&](std::uint64_t& out) -> Status {
          if (field + 8 > field_end)
            return fail("entry '" + e.name + "': zip64 extra field too short");
          out = u64(extra, field);
          field += 8;
          return {};
        };
        if (need_size) CKPT_TRY(take(e.size));
        if (need_compressed) CKPT_TRY(take(e.compressed_size));
        if (need_offset) CKPT_TRY(take(e.local_header_offset));
        return {};
      }
      at += 4 + len;
    }
    return fail("entry '" + e.name + "': sizes or offset need a zip64 extra field, none found");
  }

  // Reads the local header to find where the entry's data starts, and checks the data fits. One
  // read per entry (header + the name the central directory gives): a large model's rank file
  // has tens of thousands of entries, spread over the whole file.
  Status locate_data(Entry& e) {
    std::uint64_t at = e.local_header_offset;
    if (!fits(at, kLocalSize, size_))
      return fail("entry '" + e.name + "': no local header at offset " + std::to_string(at) +
                  " (corrupt or truncated)");
    std::size_t want =
        static_cast<std::size_t>(std::min<std::uint64_t>(kLocalSize + e.name.size(), size_ - at));
    CKPT_ASSIGN_OR_RETURN(auto header, view(at, want));
    if (u32(header, 0) != kLocalHeaderSig)
      return fail("entry '" + e.name + "': no local header at offset " + std::to_string(at) +
                  " (corrupt or truncated)");
    std::uint64_t name_len = u16(header, 26);
    std::uint64_t extra_len = u16(header, 28);
    if (!fits(at, kLocalSize + name_len + extra_len, size_))
      return fail("entry '" + e.name + "': local header runs past the end of the file");
    std::string_view local_name(
        reinterpret_cast<const char*>(header.data() + kLocalSize),
        static_cast<std::size_t>(std::min<std::uint64_t>(name_len, header.size() - kLocalSize)));
    if (name_len != e.name.size() || local_name != e.name)
      return fail("entry '" + e.name + "': local header names '" + std::string(local_name) +
                  "' (corrupt central directory)");
    e.data_offset = at + kLocalSize + name_len + extra_len;
    return check_data(e);
  }

  // The entry's data lies inside the file, and a STORED entry's sizes agree.
  Status check_data(const Entry& e) const {
    if (!fits(e.data_offset, e.compressed_size, size_))
      return fail("entry '" + e.name + "': data [" + std::to_string(e.data_offset) + ", +" +
                  std::to_string(e.compressed_size) + ") runs past the end of the file (" +
                  std::to_string(size_) + " bytes; truncated?)");
    if (e.is_stored() && e.size != e.compressed_size)
      return fail("entry '" + e.name + "': STORED but sizes differ (" + std::to_string(e.size) +
                  " vs " + std::to_string(e.compressed_size) + ")");
    return {};
  }

  std::uint64_t size_;
  const ReadAt& read_;
  const LocalHeaders& headers_;
  const std::string& label_;
  std::size_t computed_ = 0;
  std::vector<std::byte> buffer_;
  std::vector<std::byte> tail_;  // the end of the file, from tail_base_: EOCD and zip64 locator
  std::uint64_t tail_base_ = 0;
  std::uint64_t directory_offset_ = 0;
};

}  // namespace

Result<Archive> Archive::parse(std::span<const std::byte> bytes, std::string label) {
  return parse(bytes.size(), read_from(bytes), std::move(label));
}

ReadAt read_from(std::span<const std::byte> bytes) {
  return [bytes](std::uint64_t offset, std::span<std::byte> out) -> Status {
    if (offset > bytes.size() || out.size() > bytes.size() - offset)
      return invalid_input("a read of " + std::to_string(out.size()) + " bytes at offset " +
                           std::to_string(offset) + " past the end of " +
                           std::to_string(bytes.size()) + " bytes");
    std::memcpy(out.data(), bytes.data() + offset, out.size());
    return {};
  };
}

Result<Archive> Archive::parse(std::uint64_t size, const ReadAt& read, std::string label,
                               const LocalHeaders& headers) {
  Archive archive;
  archive.label_ = std::move(label);
  Parser parser(size, read, headers, archive.label_);
  CKPT_ASSIGN_OR_RETURN(archive.entries_, parser.run());
  archive.computed_offsets_ = parser.computed_offsets();
  return archive;
}

const Entry* Archive::find(std::string_view name) const {
  constexpr std::size_t kScans = 8;
  if (index_.empty() && scans_ < kScans) {
    ++scans_;
    for (const Entry& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }
  if (index_.empty()) {
    index_.reserve(entries_.size());
    for (std::size_t i = 0; i < entries_.size(); ++i)
      index_.emplace(entries_[i].name, i);  // the first of duplicate names wins
  }
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

Result<const Entry*> Archive::stored(std::string_view name) const {
  const Entry* e = find(name);
  if (!e) return invalid_input(label_ + ": zip: no entry '" + std::string(name) + "'");
  if (!e->is_stored())
    return unsupported(label_ + ": zip: entry '" + e->name + "' is compressed (method " +
                       std::to_string(e->method) + "); only STORED entries can be streamed");
  return e;
}

}  // namespace ckptstream::zip
