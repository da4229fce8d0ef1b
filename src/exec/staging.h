// Output files are born in a staging directory inside the target and renamed into place only
// when every one of them is complete and on disk. OutputStaging owns that directory, locked by
// the file beside it (make_locked_directory in io/file_lock.h); unless commit() succeeds, its
// destructor removes it with everything in it. A process killed midway (SIGKILL, power loss)
// leaves `<target>/.ckptstream-staging-[<tag>-]<pid>/` (and its lock file) whose lock is free:
// the next run into the target removes it (remove_abandoned_directories, with kStagingPrefix). The
// processes of a distributed run (distributed.h) each have their own, tagged with their rank (pids
// of different machines may be equal), and move files into place one by one (commit_one).
//
// commit() is journaled, so that at no instant does the target hold a set of files that looks
// like a complete model but is not one run's:
//   1. `<target>/.ckptstream-commit.json` is written (its bytes synced, then renamed in): the
//      staging directory, the files to remove (the earlier model's index, manifest and single
//      model.safetensors, and its files this run does not write), the files to rename, in
//      order, and a fingerprint of the plan;
//   2. the files to remove are removed and the directory synced (the target no longer looks
//      complete, on disk too);
//   3. the staged files are renamed into place, the index or model.safetensors after the other
//      files and the manifest last, and the directories fsynced;
//   4. the journal is removed, then the staging directory.
// A run interrupted during steps 2-4 leaves the journal; finish_interrupted_commit (run by the
// next process that holds the target's lock) carries the steps out again from the journal, which
// works whatever step was reached: every file to rename was complete and fsynced before step 1.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "io/file_lock.h"

namespace ckptstream {

inline constexpr std::string_view kStagingPrefix = ".ckptstream-staging-";
inline constexpr std::string_view kJournalFileName = ".ckptstream-commit.json";

// What commit() does to the target.
struct CommitList {
  std::vector<std::string> remove;  // earlier files, removed before the first rename
  std::vector<std::string> rename;  // staged files, renamed in this order (the manifest last)
  std::string fingerprint;          // identifies the plan (plan_fingerprint in executor.h)
  // Called after each removal and each rename; may be empty. Tests end the process there to see
  // what a crash at that instant leaves.
  std::function<void()> after_step;
};

class OutputStaging {
 public:
  // `<target>/.ckptstream-staging-[<tag>-]<pid>/`, locked.
  static Result<OutputStaging> create(const std::filesystem::path& target_dir,
                                      const std::string& tag = "");
  OutputStaging(OutputStaging&& other) noexcept;
  OutputStaging& operator=(OutputStaging&&) = delete;
  OutputStaging(const OutputStaging&) = delete;
  ~OutputStaging();

  const std::filesystem::path& dir() const { return dir_; }
  // Where the output named `name` (a relative path) is written; creates parent directories.
  Result<std::filesystem::path> path_for(const std::string& name) const;

  // The journaled commit described above; the staging directory is gone afterwards.
  Status commit(const CommitList& list);

  // Renames one complete file into the target and fsyncs its directory; the staging directory
  // stays (and is removed, with whatever is left in it, by the destructor).
  Status commit_one(const std::string& name) const;

 private:
  OutputStaging(std::filesystem::path target, std::filesystem::path dir, FileLock lock);
  std::filesystem::path target_;
  std::filesystem::path dir_;  // empty once committed or moved from
  FileLock lock_;
};

// fsync(2) of a directory: makes the renames and creations in it durable.
Status fsync_directory(const std::filesystem::path& dir);

// A journal found in a target: the commit of a run that was interrupted.
struct InterruptedCommit {
  std::string staging;      // the staging directory's name
  std::string fingerprint;  // of the interrupted run's plan
  std::size_t renamed = 0;  // files moved into place now
};

// If `target` holds a commit journal, completes that commit (steps 2-4) and says what it was;
// nullopt when there is none. The caller must hold the target's lock exclusively. A journal that
// cannot be read or names files outside the target is an error, and nothing is touched.
Result<std::optional<InterruptedCommit>> finish_interrupted_commit(
    const std::filesystem::path& target);

// Staging directories of `target` and, for each, the holder's line when a live process uses it.
std::vector<std::pair<std::string, std::optional<std::string>>> list_staging(
    const std::filesystem::path& target);

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
