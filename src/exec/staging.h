// Output files are born in a staging directory inside the target and renamed into place only
// when every one of them is complete and on disk. OutputStaging owns that directory: unless
// commit() succeeds, its destructor removes it with everything in it. A process killed midway
// (SIGINT, SIGKILL, power loss) leaves at most `<target>/.ckptstream-staging-<pid>/`, never a
// partial file under a final name; such leftovers can be deleted by hand. The processes of a
// distributed run (distributed.h) each have their own, tagged with their rank (pids of
// different machines may be equal), and move files into place one by one (commit_one).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "ckptstream/result.h"

namespace ckptstream {

class OutputStaging {
 public:
  // `<target>/.ckptstream-staging-[<tag>-]<pid>/`.
  static Result<OutputStaging> create(const std::filesystem::path& target_dir,
                                      const std::string& tag = "");
  OutputStaging(OutputStaging&& other) noexcept;
  OutputStaging& operator=(OutputStaging&&) = delete;
  OutputStaging(const OutputStaging&) = delete;
  ~OutputStaging();

  const std::filesystem::path& dir() const { return dir_; }
  // Where the output named `name` (a relative path) is written; creates parent directories.
  Result<std::filesystem::path> path_for(const std::string& name) const;

  // Renames the named files (in this order) into the target, fsyncs the target directory and
  // removes the staging directory.
  Status commit(const std::vector<std::string>& names);

  // Renames one complete file into the target and fsyncs its directory; the staging directory
  // stays (and is removed, with whatever is left in it, by the destructor).
  Status commit_one(const std::string& name) const;

 private:
  OutputStaging(std::filesystem::path target, std::filesystem::path dir);
  std::filesystem::path target_;
  std::filesystem::path dir_;  // empty once committed or moved from
};

// A file being written in staging: created exclusively, preallocated, written with pwrite.
// Writes of whole 4 KiB blocks at aligned offsets (from aligned memory) go through a second
// descriptor opened with O_DIRECT when asked and the file system allows it: the device reads the
// caller's buffer, the bytes are not copied into the page cache (measured here 1.3 GB/s against
// ~0.6 buffered, landscape §4.1, and the copy into the cache was a third of a warm merge's CPU).
// Everything else (a file's unaligned tail, all of it where O_DIRECT is refused, e.g. by some
// FUSE or network file systems) goes through the page cache, whose dirty pages are pushed to
// disk and dropped every `writeback_bytes` written (landscape §4.2), so the cache holds about two
// windows of output whatever the file size.
class StagedFile {
 public:
  static constexpr std::size_t kDirectAlign = 4096;  // offset, length and address of direct writes

  static Result<StagedFile> create(const std::filesystem::path& path, std::uint64_t size,
                                   std::uint64_t writeback_bytes, bool direct_writes = false);
  StagedFile(StagedFile&& other) noexcept;
  StagedFile& operator=(StagedFile&&) = delete;
  StagedFile(const StagedFile&) = delete;
  ~StagedFile();

  int fd() const { return fd_; }
  // Whether aligned blocks are still written with O_DIRECT (false after a refusal).
  bool writes_direct() const { return direct_fd_ >= 0; }
  Status write_at(std::uint64_t offset, const std::byte* data, std::size_t size);
  // fdatasync, drop the file's pages from the cache, close.
  Status finish();

 private:
  StagedFile(std::filesystem::path path, int fd, std::uint64_t writeback_bytes);
  // Writes the largest aligned prefix it can with O_DIRECT; returns the bytes written.
  Result<std::size_t> write_direct(std::uint64_t offset, const std::byte* data, std::size_t size);
  Status advance_writeback(std::uint64_t written_end);
  Error os_error(const std::string& what) const;

  std::filesystem::path path_;
  int fd_ = -1;
  int direct_fd_ = -1;  // the same file opened with O_DIRECT; -1 when not used
  std::uint64_t writeback_bytes_;
  std::uint64_t window_begin_ = 0;    // start of the window not yet pushed out
  std::uint64_t previous_begin_ = 0;  // the window pushed out last, still being written back
  std::uint64_t previous_end_ = 0;
};

// Copies `source` byte for byte into a new staged file (copy_file_range, falling back to
// read/write), then fdatasyncs it.
Status copy_into_staging(const std::filesystem::path& source,
                         const std::filesystem::path& destination);

// Writes `text` into a new staged file and fdatasyncs it.
Status write_small_file(const std::filesystem::path& path, const std::string& text);

}  // namespace ckptstream
