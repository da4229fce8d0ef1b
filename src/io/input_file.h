// Read-only access to an input file: positional reads (pread) for tensor bytes and for the
// metadata of torch.save zip files (each local header of a large rank file is one small read),
// which keep resident memory bounded; page-cache hints; and an optional read-only memory map for
// formats parsed as one byte span (DCP items, the legacy torch format). Neither copies the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "ckptstream/result.h"

namespace ckptstream {

class InputFile {
 public:
  // Only regular files open: a FIFO, device, socket or directory is refused (naming what it is)
  // without ever waiting on it.
  static Result<InputFile> open(const std::filesystem::path& path);

  InputFile(InputFile&& other) noexcept;
  InputFile& operator=(InputFile&& other) noexcept;
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile();

  const std::filesystem::path& path() const { return path_; }
  std::uint64_t size() const { return size_; }
  int fd() const { return fd_; }

  // Reads exactly out.size() bytes at `offset`; an error (naming the file) if the file is shorter.
  Status read_at(std::uint64_t offset, std::span<std::byte> out) const;

  // The whole file as a read-only mapping, created on first use. Pages are faulted in lazily, so
  // mapping a large file and reading only its metadata costs only those pages.
  Result<std::span<const std::byte>> mapped() const;

  // No read-around for this open file: metadata reads (zip headers scattered between tensors)
  // would otherwise each pull up to read_ahead_kb of tensor data into the page cache.
  void random_access() const;

  // Are the first bytes of [offset, offset+length) in the page cache? (a read that may not wait)
  bool cached(std::uint64_t offset, std::uint64_t length) const;

  // Starts reading [offset, offset+length) into the page cache without waiting: many scattered
  // small reads queued at once instead of one synchronous disk round trip each.
  void will_need(std::uint64_t offset, std::uint64_t length) const;

  // The share of the file's pages in the page cache, 0 to 1: exact through cachestat(2) (Linux
  // 6.5), else estimated from 64 probes spread over the file.
  double cached_fraction() const;
  // Tells the kernel that the page-cache pages of [offset, offset+length) will not be read again,
  // unless keep_cache() was called: then it does nothing.
  void drop_cache(std::uint64_t offset, std::uint64_t length) const;
  // Leave this file's pages cached: it was in the cache before we read it (a warm re-run, a
  // verify after a merge), and dropping what another reader put there is not ours to do.
  void keep_cache() { keep_cache_ = true; }

 private:
  InputFile(std::filesystem::path path, int fd, std::uint64_t size);

  std::filesystem::path path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
  bool keep_cache_ = false;
  struct Mapping;
  mutable std::unique_ptr<Mapping> mapping_;
};

// "a FIFO", "a directory", ... for the st_mode of a file that is not regular.
const char* file_type_name(unsigned mode);

// The whole of a small regular file (a JSON file: config, index, manifest), refused past
// `max_bytes`; opened as InputFile::open does, so nothing can hang on it.
Result<std::string> read_small_file(const std::filesystem::path& path,
                                    std::uint64_t max_bytes = 64ull << 20);

// Is there a regular file at `path` (symbolic links followed)? false when nothing is there;
// an error naming the path when something else is (a directory, a FIFO, a symbolic link loop)
// or it cannot be looked at (permission denied).
Result<bool> regular_file_exists(const std::filesystem::path& path);

// Bounds check with overflow-safe arithmetic: does [offset, offset+length) fit in `size`?
inline bool range_fits(std::uint64_t offset, std::uint64_t length, std::uint64_t size) {
  return offset <= size && length <= size - offset;
}

}  // namespace ckptstream
