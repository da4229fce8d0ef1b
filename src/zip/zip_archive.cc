#include "zip/zip_archive.h"

#include <algorithm>
#include <cstring>

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

class Parser {
 public:
  Parser(std::span<const std::byte> bytes, const std::string& label)
      : bytes_(bytes), label_(label) {}

  Result<std::vector<Entry>> run() {
    CKPT_ASSIGN_OR_RETURN(std::size_t eocd, find_eocd());
    CKPT_ASSIGN_OR_RETURN(Directory dir, read_directory_location(eocd));
    return read_entries(dir);
  }

 private:
  Error fail(const std::string& what) const { return invalid_input(label_ + ": zip: " + what); }

  Result<std::size_t> find_eocd() const {
    if (bytes_.size() < kEocdSize)
      return fail("file too short (" + std::to_string(bytes_.size()) +
                  " bytes) to hold an end-of-central-directory record (truncated?)");
    // The EOCD ends the file unless a comment (at most 65535 bytes) follows it.
    std::size_t last = bytes_.size() - kEocdSize;
    std::size_t first = last > 0xFFFF ? last - 0xFFFF : 0;
    for (std::size_t at = last + 1; at-- > first;) {
      if (u32(bytes_, at) != kEocdSig) continue;
      std::size_t comment = u16(bytes_, at + 20);
      if (comment <= bytes_.size() - at - kEocdSize) return at;
    }
    return fail("no end-of-central-directory record (truncated or not a zip file)");
  }

  Result<Directory> read_directory_location(std::size_t eocd) const {
    Directory dir{u16(bytes_, eocd + 10), u32(bytes_, eocd + 16), u32(bytes_, eocd + 12)};
    if (eocd >= kZip64LocatorSize && u32(bytes_, eocd - kZip64LocatorSize) == kZip64LocatorSig) {
      std::uint64_t at = u64(bytes_, eocd - kZip64LocatorSize + 8);
      if (!fits(at, kZip64EocdSize, eocd - kZip64LocatorSize) || u32(bytes_, at) != kZip64EocdSig)
        return fail("zip64 end-of-central-directory locator points to offset " +
                    std::to_string(at) + ", where there is no zip64 record");
      dir.entries = u64(bytes_, at + 32);
      dir.size = u64(bytes_, at + 40);
      dir.offset = u64(bytes_, at + 48);
    }
    if (!fits(dir.offset, dir.size, bytes_.size()))
      return fail("central directory [" + std::to_string(dir.offset) + ", +" +
                  std::to_string(dir.size) + ") lies outside the file of " +
                  std::to_string(bytes_.size()) + " bytes (truncated?)");
    if (dir.entries > dir.size / kCentralSize)
      return fail("central directory of " + std::to_string(dir.size) + " bytes cannot hold " +
                  std::to_string(dir.entries) + " entries");
    return dir;
  }

  Result<std::vector<Entry>> read_entries(const Directory& dir) const {
    std::vector<Entry> entries;
    entries.reserve(static_cast<std::size_t>(dir.entries));
    std::uint64_t at = dir.offset;
    std::uint64_t end = dir.offset + dir.size;
    for (std::uint64_t i = 0; i < dir.entries; ++i) {
      CKPT_ASSIGN_OR_RETURN(Entry entry, read_entry(at, end, i));
      CKPT_TRY(locate_data(entry));
      entries.push_back(std::move(entry));
    }
    return entries;
  }

  // Reads the central directory entry at `at` (advanced past it).
  Result<Entry> read_entry(std::uint64_t& at, std::uint64_t end, std::uint64_t index) const {
    std::string where = "central directory entry " + std::to_string(index);
    if (!fits(at, kCentralSize, end) || u32(bytes_, at) != kCentralSig)
      return fail(where + " at offset " + std::to_string(at) + " is corrupt (bad signature)");
    std::size_t name_len = u16(bytes_, at + 28);
    std::size_t extra_len = u16(bytes_, at + 30);
    std::size_t comment_len = u16(bytes_, at + 32);
    std::uint64_t total = kCentralSize + name_len + extra_len + comment_len;
    if (!fits(at, total, end)) return fail(where + " runs past the end of the central directory");
    Entry e;
    e.name.assign(reinterpret_cast<const char*>(bytes_.data() + at + kCentralSize), name_len);
    e.method = u16(bytes_, at + 10);
    e.crc32 = u32(bytes_, at + 16);
    e.compressed_size = u32(bytes_, at + 20);
    e.size = u32(bytes_, at + 24);
    e.local_header_offset = u32(bytes_, at + 42);
    CKPT_TRY(apply_zip64_extra(e, at + kCentralSize + name_len, extra_len));
    at += total;
    return e;
  }

  // Replaces 0xFFFFFFFF fields by the values of the zip64 extra field, in the fixed order.
  Status apply_zip64_extra(Entry& e, std::uint64_t extra, std::size_t extra_len) const {
    bool need_size = e.size == 0xFFFFFFFF;
    bool need_compressed = e.compressed_size == 0xFFFFFFFF;
    bool need_offset = e.local_header_offset == 0xFFFFFFFF;
    if (!need_size && !need_compressed && !need_offset) return {};
    std::uint64_t end = extra + extra_len;
    for (std::uint64_t at = extra; at + 4 <= end;) {
      std::uint16_t id = u16(bytes_, at);
      std::uint64_t len = u16(bytes_, at + 2);
      if (len > end - at - 4) break;
      if (id == kZip64ExtraId) {
        std::uint64_t field = at + 4;
        std::uint64_t field_end = field + len;
        auto take = [&](std::uint64_t& out) -> Status {
          if (field + 8 > field_end)
            return fail("entry '" + e.name + "': zip64 extra field too short");
          out = u64(bytes_, field);
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

  // Reads the local header to find where the entry's data starts, and checks the data fits.
  Status locate_data(Entry& e) const {
    std::uint64_t at = e.local_header_offset;
    if (!fits(at, kLocalSize, bytes_.size()) || u32(bytes_, at) != kLocalHeaderSig)
      return fail("entry '" + e.name + "': no local header at offset " + std::to_string(at) +
                  " (corrupt or truncated)");
    std::uint64_t name_len = u16(bytes_, at + 26);
    std::uint64_t extra_len = u16(bytes_, at + 28);
    if (!fits(at, kLocalSize + name_len + extra_len, bytes_.size()))
      return fail("entry '" + e.name + "': local header runs past the end of the file");
    std::string_view local_name(reinterpret_cast<const char*>(bytes_.data() + at + kLocalSize),
                                static_cast<std::size_t>(name_len));
    if (local_name != e.name)
      return fail("entry '" + e.name + "': local header names '" + std::string(local_name) +
                  "' (corrupt central directory)");
    e.data_offset = at + kLocalSize + name_len + extra_len;
    if (!fits(e.data_offset, e.compressed_size, bytes_.size()))
      return fail("entry '" + e.name + "': data [" + std::to_string(e.data_offset) + ", +" +
                  std::to_string(e.compressed_size) + ") runs past the end of the file (" +
                  std::to_string(bytes_.size()) + " bytes; truncated?)");
    if (e.is_stored() && e.size != e.compressed_size)
      return fail("entry '" + e.name + "': STORED but sizes differ (" + std::to_string(e.size) +
                  " vs " + std::to_string(e.compressed_size) + ")");
    return {};
  }

  std::span<const std::byte> bytes_;
  const std::string& label_;
};

}  // namespace

Result<Archive> Archive::parse(std::span<const std::byte> bytes, std::string label) {
  Archive archive;
  archive.label_ = std::move(label);
  CKPT_ASSIGN_OR_RETURN(archive.entries_, Parser(bytes, archive.label_).run());
  for (std::size_t i = 0; i < archive.entries_.size(); ++i)
    archive.index_.emplace(archive.entries_[i].name, i);  // the first of duplicate names wins
  return archive;
}

const Entry* Archive::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
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
