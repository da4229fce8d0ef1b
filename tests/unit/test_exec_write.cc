// Writing output files: StagedFile's O_DIRECT blocks and their fallback to the page cache, and
// FileWriter's pipeline (buffers filled in place or by copy, handed to its I/O thread, windows
// ending past a buffer's end, zero-filled gaps, errors), checked byte for byte.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "exec/file_writer.h"
#include "exec/staging.h"
#include "temp_dir.h"

using namespace ckptstream;
namespace fs = std::filesystem;
using ckptstream::testing::file_bytes;
using Bytes = std::vector<std::byte>;
using ckptstream::testing::TempDir;

namespace {

Bytes random_bytes(std::size_t size, unsigned seed) {
  std::mt19937 rng(seed);
  Bytes bytes(size);
  for (auto& b : bytes) b = static_cast<std::byte>(rng());
  return bytes;
}

// Writes `want` through a FileWriter in pieces of random sizes, alternating between producing
// in room() (up to its full length, past the buffer's end) and append(); zero runs of `want`
// longer than 100 bytes go through zero_fill_to.
void write_through(const fs::path& path, const Bytes& want, std::size_t budget, bool direct,
                   unsigned seed) {
  auto file = StagedFile::create(path, want.size(), 4096, direct);
  REQUIRE(file.ok());
  WriteBuffers buffers(budget);
  std::mt19937 rng(seed);
  {
    FileWriter writer(*file, buffers);
    while (writer.position() < want.size()) {
      std::size_t at = writer.position();
      std::size_t zeros = 0;
      while (at + zeros < want.size() && want[at + zeros] == std::byte{0}) ++zeros;
      if (zeros > 100) {
        REQUIRE(writer.zero_fill_to(at + zeros).ok());
        continue;
      }
      std::size_t left = want.size() - at;
      if (rng() % 2 == 0) {
        std::span<std::byte> room = writer.room();
        REQUIRE(room.size() >= WriteBuffers::kMaxElementBytes);
        std::size_t n =
            std::min<std::size_t>(left, rng() % 3 == 0 ? room.size() : 1 + rng() % room.size());
        std::memcpy(room.data(), want.data() + at, n);
        REQUIRE(writer.advance(n).ok());
      } else {
        std::size_t n = std::min<std::size_t>(left, 1 + rng() % (3 * buffers.capacity()));
        REQUIRE(writer.append({want.data() + at, n}).ok());
      }
    }
    REQUIRE(writer.finish().ok());
  }
  REQUIRE(file->finish().ok());
}

}  // namespace

TEST_CASE("WriteBuffers: whole 4 KiB blocks when the budget allows, tiny ones otherwise") {
  CHECK(WriteBuffers(16ull << 20).capacity() == 4ull << 20);
  CHECK(WriteBuffers(40000).capacity() == 8192);
  CHECK(WriteBuffers(100).capacity() == 25);
  CHECK(WriteBuffers(4).capacity() == WriteBuffers::kMaxElementBytes);
  WriteBuffers buffers(16ull << 10);
  for (std::size_t i = 0; i < WriteBuffers::kCount; ++i) {
    CHECK(reinterpret_cast<std::uintptr_t>(buffers.get(i)) % StagedFile::kDirectAlign == 0);
    CHECK(buffers.get(i) == buffers.get(i));  // allocated once
  }
}

TEST_CASE("FileWriter: the file holds exactly what was written, whatever the buffers") {
  TempDir dir("exec_write");
  // Random bytes with zero runs, sizes around the buffers' blocks.
  for (std::size_t size : {0ul, 1ul, 4095ul, 4096ul, 12289ul, 300000ul}) {
    Bytes want = random_bytes(size, static_cast<unsigned>(size));
    for (std::size_t i = 0; i + 5000 < size; i += 70000)
      std::fill_n(want.begin() + static_cast<std::ptrdiff_t>(i + 1000), 3000, std::byte{0});
    for (bool direct : {true, false}) {
      for (std::size_t budget : {4ul, 100ul, 16ul << 10, 40000ul, 4ul << 20}) {
        CAPTURE(size);
        CAPTURE(direct);
        CAPTURE(budget);
        fs::path path = dir.path / "out.bin";
        write_through(path, want, budget, direct, static_cast<unsigned>(budget + size));
        CHECK(file_bytes(path) == want);
        fs::remove(path);
      }
    }
  }
}

TEST_CASE("StagedFile: aligned blocks direct, the rest buffered; a refused write falls back") {
  TempDir dir("exec_write");
  constexpr std::size_t kBlock = StagedFile::kDirectAlign;
  WriteBuffers buffers(64 * kBlock);  // aligned memory, 16 blocks a buffer
  std::byte* memory = buffers.get(0);
  Bytes want = random_bytes(3 * kBlock + 100, 7);
  std::memcpy(memory, want.data(), want.size());

  auto file = StagedFile::create(dir.path / "a.bin", want.size(), 0, true);
  REQUIRE(file.ok());
  bool direct = file->writes_direct();  // false where the file system has no O_DIRECT
  REQUIRE(file->write_at(0, memory, 2 * kBlock + 10).ok());  // 2 blocks direct, 10 bytes not
  REQUIRE(file->write_at(2 * kBlock + 10, memory + 2 * kBlock + 10, kBlock + 90).ok());
  CHECK(file->writes_direct() == direct);  // unaligned pieces go buffered, direct stays on
  REQUIRE(file->finish().ok());
  CHECK(file_bytes(dir.path / "a.bin") == want);

  // Memory the device cannot read from (one byte off): the kernel refuses the direct write
  // (EINVAL); the bytes go through the page cache instead, and so does everything after.
  auto refused = StagedFile::create(dir.path / "b.bin", want.size(), 0, true);
  REQUIRE(refused.ok());
  std::memmove(memory + 1, memory, want.size());
  REQUIRE(refused->write_at(0, memory + 1, 2 * kBlock).ok());
  if (direct && refused->writes_direct())
    MESSAGE("this file system takes unaligned direct writes: no fallback to check");
  else
    CHECK(!refused->writes_direct());
  std::memmove(memory, memory + 1, want.size());
  REQUIRE(refused->write_at(2 * kBlock, memory + 2 * kBlock, want.size() - 2 * kBlock).ok());
  REQUIRE(refused->finish().ok());
  CHECK(file_bytes(dir.path / "b.bin") == want);

  // Not asked for: never direct.
  auto buffered = StagedFile::create(dir.path / "c.bin", want.size(), 0, false);
  REQUIRE(buffered.ok());
  CHECK(!buffered->writes_direct());
}

TEST_CASE("FileWriter: a write error is returned, and the writer stops cleanly") {
  TempDir dir("exec_write");
  WriteBuffers buffers(100);  // 25-byte buffers: many blocks
  Bytes want = random_bytes(1000, 3);
  auto file = StagedFile::create(dir.path / "a.bin", want.size(), 0, false);
  REQUIRE(file.ok());
  // Swap a read-only descriptor in behind the file's back: every write fails (EBADF).
  int read_only = ::open((dir.path / "a.bin").c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(read_only >= 0);
  REQUIRE(::dup2(read_only, file->fd()) == file->fd());
  ::close(read_only);
  {
    FileWriter writer(*file, buffers);
    Status status = writer.append({want.data(), want.size()});
    if (status.ok()) status = writer.finish();
    REQUIRE(!status.ok());
    CHECK(status.error().message.find("a.bin") != std::string::npos);
    CHECK(status.error().message.find("write failed") != std::string::npos);
  }
  // And a writer dropped midway (another tensor failed) joins its thread without writing more.
  auto other = StagedFile::create(dir.path / "b.bin", want.size(), 0, false);
  REQUIRE(other.ok());
  {
    FileWriter writer(*other, buffers);
    REQUIRE(writer.append({want.data(), 500}).ok());
  }
  CHECK(fs::file_size(dir.path / "b.bin") == want.size());  // preallocated, partly written
}
