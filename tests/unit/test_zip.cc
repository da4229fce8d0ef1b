#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "zip/zip_archive.h"

using namespace ckptstream;
using namespace ckptstream::zip;

namespace {

std::vector<std::byte> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::string s(std::istreambuf_iterator<char>(in), {});
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

// A minimal zip writer for hand-built archives.
struct ZipBuilder {
  struct Options {
    std::uint16_t method = 0;
    bool zip64_sizes = false;   // central sizes 0xFFFFFFFF + zip64 extra
    bool zip64_offset = false;  // central offset 0xFFFFFFFF + zip64 extra
    std::size_t padding = 0;    // "FB" extra in the local header
  };
  std::vector<std::byte> out;
  std::vector<std::byte> central;
  std::uint64_t count = 0;

  void put(std::vector<std::byte>& v, std::uint64_t x, int width) {
    for (int i = 0; i < width; ++i) v.push_back(static_cast<std::byte>((x >> (8 * i)) & 0xFF));
  }
  void put(std::vector<std::byte>& v, std::string_view s) {
    for (char c : s) v.push_back(static_cast<std::byte>(c));
  }

  void add(const std::string& name, const std::string& data, Options o) {
    std::uint64_t local = out.size();
    put(out, 0x04034b50, 4);
    put(out, 20, 2);
    put(out, 0x0808, 2);
    put(out, o.method, 2);
    put(out, 0, 4);
    put(out, 0, 4);  // crc
    put(out, 0, 4);
    put(out, 0, 4);  // sizes (in the data descriptor)
    put(out, name.size(), 2);
    put(out, o.padding ? o.padding + 4 : 0, 2);
    put(out, name);
    if (o.padding) {
      put(out, 0x4246, 2);
      put(out, o.padding, 2);
      put(out, std::string(o.padding, 'Z'));
    }
    put(out, data);
    put(out, 0x08074b50, 4);
    put(out, 0, 4);
    put(out, data.size(), 4);
    put(out, data.size(), 4);

    std::vector<std::byte> extra;
    if (o.zip64_sizes || o.zip64_offset) {
      put(extra, 0x0001, 2);
      put(extra, (o.zip64_sizes ? 16 : 0) + (o.zip64_offset ? 8 : 0), 2);
      if (o.zip64_sizes) {
        put(extra, data.size(), 8);
        put(extra, data.size(), 8);
      }
      if (o.zip64_offset) put(extra, local, 8);
    }
    put(central, 0x02014b50, 4);
    put(central, 0x031E, 2);
    put(central, 45, 2);
    put(central, 0x0808, 2);
    put(central, o.method, 2);
    put(central, 0, 4);
    put(central, 0x12345678, 4);
    put(central, o.zip64_sizes ? 0xFFFFFFFF : data.size(), 4);
    put(central, o.zip64_sizes ? 0xFFFFFFFF : data.size(), 4);
    put(central, name.size(), 2);
    put(central, extra.size(), 2);
    put(central, 0, 2);
    put(central, 0, 2);
    put(central, 0, 2);
    put(central, 0, 4);
    put(central, o.zip64_offset ? 0xFFFFFFFF : local, 4);
    put(central, name);
    central.insert(central.end(), extra.begin(), extra.end());
    ++count;
  }

  std::vector<std::byte> finish(bool zip64 = true, const std::string& comment = "") {
    std::uint64_t cd_offset = out.size();
    out.insert(out.end(), central.begin(), central.end());
    std::uint64_t eocd64 = out.size();
    if (zip64) {
      put(out, 0x06064b50, 4);
      put(out, 44, 8);
      put(out, 0x031E, 2);
      put(out, 45, 2);
      put(out, 0, 4);
      put(out, 0, 4);
      put(out, count, 8);
      put(out, count, 8);
      put(out, central.size(), 8);
      put(out, cd_offset, 8);
      put(out, 0x07064b50, 4);
      put(out, 0, 4);
      put(out, eocd64, 8);
      put(out, 1, 4);
    }
    put(out, 0x06054b50, 4);
    put(out, 0, 2);
    put(out, 0, 2);
    put(out, zip64 ? 0xFFFF : count, 2);
    put(out, zip64 ? 0xFFFF : count, 2);
    put(out, zip64 ? 0xFFFFFFFF : central.size(), 4);
    put(out, zip64 ? 0xFFFFFFFF : cd_offset, 4);
    put(out, comment.size(), 2);
    put(out, comment);
    return out;
  }
};

std::string text_at(const std::vector<std::byte>& bytes, const Entry& e) {
  return std::string(reinterpret_cast<const char*>(bytes.data() + e.data_offset), e.size);
}

}  // namespace

TEST_CASE("reads a torch.save archive: names, 64-byte aligned data, sizes") {
  auto bytes = read_file(CKPT_FIXTURES "/torch/views.pt");
  auto archive = Archive::parse(bytes, "views.pt");
  REQUIRE_MESSAGE(archive.ok(), (archive.ok() ? "" : archive.error().message));
  REQUIRE(!archive->entries().empty());
  CHECK(archive->entries().front().name == "views/data.pkl");
  const Entry* order = archive->find("views/byteorder");
  REQUIRE(order);
  CHECK(text_at(bytes, *order) == "little");
  const Entry* pkl = archive->find("views/data.pkl");
  REQUIRE(pkl);
  CHECK(pkl->data_offset % 64 == 0);
  CHECK(static_cast<std::uint8_t>(bytes[pkl->data_offset]) == 0x80);  // PROTO
  for (const auto& e : archive->entries()) {
    CHECK(e.is_stored());
    CHECK(e.data_offset + e.size <= bytes.size());
  }
  CHECK(archive->find("views/nope") == nullptr);
  auto missing = archive->stored("views/nope");
  REQUIRE(!missing.ok());
  CHECK(missing.error().message == "views.pt: zip: no entry 'views/nope'");
}

TEST_CASE("hand-built archives: classic EOCD, zip64 EOCD, zip64 extra fields") {
  for (bool zip64 : {false, true}) {
    ZipBuilder b;
    b.add("a/one", "hello", {});
    b.add("a/two", "world!", {0, true, false, 13});
    b.add("a/three", "xyz", {0, true, true, 0});
    b.add("a/four", "", {0, false, true, 0});
    auto bytes = b.finish(zip64);
    auto archive = Archive::parse(bytes, "hand.zip");
    REQUIRE_MESSAGE(archive.ok(), (archive.ok() ? "" : archive.error().message));
    REQUIRE(archive->entries().size() == 4);
    CHECK(text_at(bytes, *archive->find("a/one")) == "hello");
    CHECK(text_at(bytes, *archive->find("a/two")) == "world!");
    CHECK(text_at(bytes, *archive->find("a/three")) == "xyz");
    CHECK(archive->find("a/four")->size == 0);
    CHECK(archive->find("a/one")->crc32 == 0x12345678);
  }
}

TEST_CASE("an archive comment after the end record: found by the wider search, any length") {
  // torch.save writes no comment, so the parser reads the end records alone first; other zips
  // may end with up to 65535 bytes of comment (which may even hold a fake end-record signature).
  const std::string fake_eocd("PK\x05\x06", 4);
  for (const std::string& comment :
       {std::string("made by hand"), std::string(1000, 'c') + fake_eocd + std::string(30, 'd'),
        std::string(0xFFFF, 'x')}) {
    for (bool zip64 : {false, true}) {
      ZipBuilder b;
      b.add("a/one", "hello", {});
      b.add("a/two", "world!", {0, true, true, 0});
      auto bytes = b.finish(zip64, comment);
      std::size_t reads = 0, largest = 0;
      ReadAt read = [&](std::uint64_t offset, std::span<std::byte> out) -> Status {
        ++reads;
        largest = std::max(largest, out.size());
        REQUIRE(offset + out.size() <= bytes.size());
        std::memcpy(out.data(), bytes.data() + offset, out.size());
        return {};
      };
      auto archive = Archive::parse(bytes.size(), read, "comment.zip");
      REQUIRE_MESSAGE(archive.ok(), (archive.ok() ? "" : archive.error().message));
      REQUIRE(archive->entries().size() == 2);
      CHECK(text_at(bytes, *archive->find("a/one")) == "hello");
      CHECK(text_at(bytes, *archive->find("a/two")) == "world!");
      CHECK(largest >= std::min<std::size_t>(bytes.size(), comment.size() + 22));
    }
  }
  // Without a comment, the end records are all that is read of the file's tail.
  ZipBuilder b;
  b.add("a/data", std::string(100000, 'z'), {});
  auto bytes = b.finish(true);
  std::size_t largest = 0;
  ReadAt read = [&](std::uint64_t offset, std::span<std::byte> out) -> Status {
    largest = std::max(largest, out.size());
    std::memcpy(out.data(), bytes.data() + offset, out.size());
    return {};
  };
  REQUIRE(Archive::parse(bytes.size(), read, "plain.zip").ok());
  CHECK(largest < 1000);
  // A comment longer than what follows the record is no end record.
  auto bad = ZipBuilder{}.finish(false, "abc");
  bad.pop_back();
  auto cut = Archive::parse(bad, "cut.zip");
  REQUIRE(!cut.ok());
  CHECK(cut.error().message.find("no end-of-central-directory") != std::string::npos);
}

TEST_CASE("a compressed entry is an error naming it, when asked for its bytes") {
  ZipBuilder b;
  b.add("a/data.pkl", "abc", {8, false, false, 0});
  auto bytes = b.finish();
  auto archive = Archive::parse(bytes, "c.zip");
  REQUIRE(archive.ok());
  auto e = archive->stored("a/data.pkl");
  REQUIRE(!e.ok());
  CHECK(e.error().kind == ErrorKind::kUnsupported);
  CHECK(e.error().message ==
        "c.zip: zip: entry 'a/data.pkl' is compressed (method 8); only STORED entries can be "
        "streamed");
}

TEST_CASE("corrupt and truncated archives give errors naming the file") {
  ZipBuilder b;
  b.add("a/x", "0123456789", {});
  auto good = b.finish();
  auto error = [](std::vector<std::byte> bytes) {
    auto a = Archive::parse(bytes, "bad.zip");
    REQUIRE(!a.ok());
    CHECK(a.error().message.rfind("bad.zip: zip: ", 0) == 0);
    return a.error().message;
  };
  // Truncated: the end records are gone.
  CHECK(error({good.begin(), good.begin() + 40}).find("no end-of-central-directory") !=
        std::string::npos);
  CHECK(error({good.begin(), good.begin() + 10}).find("too short") != std::string::npos);
  // Every truncation fails cleanly.
  for (std::size_t n = 0; n < good.size(); ++n) {
    std::vector<std::byte> cut(good.begin(), good.begin() + static_cast<long>(n));
    CHECK(!Archive::parse(cut, "cut.zip").ok());
  }
  // Central directory signature broken.
  auto bad = good;
  std::size_t cd = 30 + 3 + 10 + 16;
  REQUIRE(static_cast<std::uint8_t>(bad[cd + 2]) == 0x01);
  bad[cd + 2] = std::byte{0x09};
  CHECK(error(bad).find("central directory entry 0 at offset 59 is corrupt") != std::string::npos);
  // Local header offset pointing nowhere.
  bad = good;
  bad[cd + 42] = std::byte{0x07};
  CHECK(error(bad).find("no local header") != std::string::npos);
  // Sizes beyond the file.
  bad = good;
  bad[cd + 23] = std::byte{0x7f};
  bad[cd + 27] = std::byte{0x7f};
  CHECK(error(bad).find("runs past the end of the file") != std::string::npos);
  // Zip64 locator pointing outside.
  bad = good;
  std::size_t locator = bad.size() - 22 - 20;
  bad[locator + 8] = std::byte{0xff};
  CHECK(error(bad).find("zip64") != std::string::npos);
  // Entry count larger than the directory can hold.
  bad = good;
  std::size_t eocd64 = locator - 56;
  bad[eocd64 + 32] = std::byte{0xff};
  CHECK(error(bad).find("cannot hold") != std::string::npos);
}

TEST_CASE("positional reads give the same archive, after announcing every local header") {
  auto bytes = read_file(CKPT_FIXTURES "/torch/views.pt");
  auto whole = Archive::parse(bytes, "views.pt");
  REQUIRE(whole.ok());
  std::size_t reads = 0;
  std::vector<std::uint64_t> announced;
  ReadAt read = [&](std::uint64_t offset, std::span<std::byte> out) -> Status {
    ++reads;
    REQUIRE(offset + out.size() <= bytes.size());
    std::memcpy(out.data(), bytes.data() + offset, out.size());
    return {};
  };
  WillRead will_read = [&](std::uint64_t offset, std::uint64_t) { announced.push_back(offset); };
  auto stepped = Archive::parse(bytes.size(), read, "views.pt", LocalHeaders{will_read});
  REQUIRE(stepped.ok());
  REQUIRE(stepped->entries().size() == whole->entries().size());
  for (std::size_t i = 0; i < whole->entries().size(); ++i) {
    CHECK(stepped->entries()[i].name == whole->entries()[i].name);
    CHECK(stepped->entries()[i].data_offset == whole->entries()[i].data_offset);
    CHECK(announced[i] == whole->entries()[i].local_header_offset);
  }
  // The file's tail (EOCD, zip64 locator), the zip64 EOCD torch always writes, the central
  // directory, then one read per local header: never the data.
  CHECK(reads == 3 + whole->entries().size());
  // A read error is passed on.
  ReadAt failing = [](std::uint64_t, std::span<std::byte>) -> Status {
    return io_error("x: read failed");
  };
  auto failed = Archive::parse(bytes.size(), failing, "views.pt");
  REQUIRE(!failed.ok());
  CHECK(failed.error().message == "x: read failed");
}

namespace {

// Parses `bytes` through positional reads with `sample` local headers (0: all); counts reads.
Result<Archive> parse_counting(const std::vector<std::byte>& bytes, std::size_t sample,
                               std::size_t& reads) {
  reads = 0;
  ReadAt read = [&](std::uint64_t offset, std::span<std::byte> out) -> Status {
    ++reads;
    return read_from(bytes)(offset, out);
  };
  return Archive::parse(bytes.size(), read, "a.pt", LocalHeaders{nullptr, sample});
}

}  // namespace

TEST_CASE("sampled local headers: offsets computed by torch's rule equal those real torch wrote") {
  std::size_t files = 0, computed = 0;
  for (const char* dir : {"/torch", "/fsdp/w4", "/fsdp/hsdp", "/fsdp/bf16"}) {
    for (const auto& item : std::filesystem::directory_iterator(std::string(CKPT_FIXTURES) + dir)) {
      if (item.path().extension() != ".pt") continue;
      auto bytes = read_file(item.path().string());
      if (bytes.size() < 4 || std::memcmp(bytes.data(), "PK\x03\x04", 4) != 0) continue;  // legacy
      CAPTURE(item.path().string());
      std::size_t full_reads = 0, sampled_reads = 0;
      auto full = parse_counting(bytes, 0, full_reads);
      auto sampled = parse_counting(bytes, 2, sampled_reads);  // the first and the last header
      REQUIRE(full.ok());
      REQUIRE(sampled.ok());
      const auto& want = full->entries();
      REQUIRE(sampled->entries().size() == want.size());
      for (std::size_t i = 0; i < want.size(); ++i) {
        CAPTURE(want[i].name);
        CHECK(sampled->entries()[i].data_offset == want[i].data_offset);
      }
      if (item.path().filename() == "big_endian.pt") {
        // Rewritten by Python's zipfile (no padding field): every header is read.
        CHECK(sampled->computed_offsets() == 0);
        CHECK(sampled_reads == full_reads + 2);
      } else if (want.size() > 2) {
        CHECK(sampled->computed_offsets() == want.size() - 2);
        CHECK(sampled_reads == full_reads - (want.size() - 2));
      }
      CHECK(full->computed_offsets() == 0);
      ++files;
      computed += sampled->computed_offsets();
    }
  }
  CHECK(files >= 10);
  CHECK(computed >= 100);
}

TEST_CASE("sampled local headers: another alignment is found; another layout has all read") {
  // Data aligned to 4096 by torch's rule (torch.serialization.config.save.storage_alignment).
  ZipBuilder aligned;
  for (int i = 0; i < 12; ++i) {
    std::string name = "a/data/" + std::to_string(i);
    std::uint64_t start = aligned.out.size() + 30 + name.size() + 4;
    std::size_t padding = static_cast<std::size_t>((4096 - start % 4096) % 4096);
    aligned.add(name, std::string(100 + i, 'x'), {.padding = padding});
  }
  auto bytes = aligned.finish();
  std::size_t full_reads = 0, sampled_reads = 0;
  auto full = parse_counting(bytes, 0, full_reads);
  auto sampled = parse_counting(bytes, 4, sampled_reads);
  REQUIRE(full.ok());
  REQUIRE(sampled.ok());
  CHECK(sampled->computed_offsets() == 8);
  for (std::size_t i = 0; i < 12; ++i) {
    CHECK(sampled->entries()[i].data_offset == full->entries()[i].data_offset);
    CHECK(sampled->entries()[i].data_offset % 4096 == 0);
  }

  // No padding field (Python's zipfile): the sample does not follow the rule, all are read.
  ZipBuilder plain;
  for (int i = 0; i < 12; ++i) plain.add("a/data/" + std::to_string(i), std::string(7, 'y'), {});
  bytes = plain.finish();
  full = parse_counting(bytes, 0, full_reads);
  sampled = parse_counting(bytes, 4, sampled_reads);
  REQUIRE(full.ok());
  REQUIRE(sampled.ok());
  CHECK(sampled->computed_offsets() == 0);
  CHECK(sampled_reads == full_reads + 4);  // the sample, then every header
  for (std::size_t i = 0; i < 12; ++i)
    CHECK(text_at(bytes, sampled->entries()[i]) == std::string(7, 'y'));

  // A computed offset past the end of the file is an error naming the entry.
  ZipBuilder cut;
  for (int i = 0; i < 12; ++i) {
    std::string name = "a/data/" + std::to_string(i);
    std::uint64_t start = cut.out.size() + 30 + name.size() + 4;
    cut.add(name, std::string(64, 'z'),
            {.padding = static_cast<std::size_t>((64 - start % 64) % 64)});
  }
  bytes = cut.finish();
  // entry 5's central local-header offset moved to the end of the central directory
  auto good = parse_counting(bytes, 0, full_reads);
  REQUIRE(good.ok());
  std::size_t cd = static_cast<std::size_t>(good->entries()[11].data_offset + 64 + 16);
  for (int i = 0; i < 5; ++i) cd += 46 + ("a/data/" + std::to_string(i)).size();
  REQUIRE(static_cast<std::uint8_t>(bytes[cd]) == 0x50);
  std::uint32_t far = static_cast<std::uint32_t>(bytes.size() - 40);
  std::memcpy(bytes.data() + cd + 42, &far, 4);
  auto broken = parse_counting(bytes, 4, sampled_reads);
  REQUIRE(!broken.ok());
  CHECK(broken.error().message.find("entry 'a/data/5'") != std::string::npos);
}
