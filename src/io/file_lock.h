// Advisory locks on files (flock(2)), which the kernel releases when the holder dies however it
// dies: a lock that can be taken means whoever held it is gone. ckptstream locks
//   <target>/.ckptstream.lock             the output directory: exclusively for a one-process
//                                         run, shared by the ranks of a distributed run
//   <target>/.ckptstream/<file>.lock      one output file of a distributed run, while written
//   <staging dir>/.lock                   a staging directory, for as long as it is used
//   <target file>.tmp.* (itself)          convert --to torch's temporary file
// so that a second run into the same place is refused naming the holder, and what an
// interrupted run left is recognised as such (its lock is free) and removed by the next one.
// A lock file holds one line naming its holder ("pid 1234 on host: merge, since ..."),
// written by whoever created it.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/result.h"

namespace ckptstream {

class FileLock {
 public:
  enum class Mode { kExclusive, kShared };

  // Takes the lock of `path` (creating the file), waiting at most `wait` for it. When it is still
  // held in a way that excludes `mode`, an I/O error names `what` and the holder's line. `owner`
  // describes this process ("merge"); it is written into the file with pid, host and time.
  static Result<FileLock> acquire(const std::filesystem::path& path, Mode mode,
                                  std::string_view owner, std::string_view what,
                                  std::chrono::milliseconds wait = {});
  // The holder's line if `path` is locked by a live process now, else nullopt (no such file, or
  // its lock could be taken: whoever held it is gone).
  static std::optional<std::string> holder(const std::filesystem::path& path);

  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock();

  // Takes the lock exclusively or shared instead (not atomic: flock drops the old lock first);
  // false when that cannot be had now (the lock is then no longer held at all).
  bool convert(Mode mode);
  // Releases the lock; the file is removed when no other process holds it.
  void release();
  bool held() const { return fd_ >= 0; }

 private:
  FileLock(std::filesystem::path path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::filesystem::path path_;
  int fd_ = -1;
};

// Directories that live as long as a process uses them (staging directories, DCP scratch): each
// is locked by the file beside it, `<dir>.lock`, taken before the directory is made and released
// after it is removed, so that whoever sees the directory finds it locked while its owner lives.

// `<dir>.lock`.
std::filesystem::path lock_file_of(const std::filesystem::path& dir);

// Takes `<dir>.lock` (waiting at most `wait`: another process may hold it for an instant, checking
// whether it is abandoned), removes a directory of that name a gone process left, and makes
// `dir` with `mode`. The directory is the caller's while it holds the returned lock.
Result<FileLock> make_locked_directory(const std::filesystem::path& dir, std::string_view owner,
                                       std::chrono::milliseconds wait, unsigned mode = 0755);

// A directory whose lock was free, removed.
struct AbandonedDirectory {
  std::string name;
  std::uint64_t bytes = 0;
};

// Removes the directories of `parent` whose names start with `prefix` and whose lock is free or
// missing, with their lock files (and lock files left without a directory).
std::vector<AbandonedDirectory> remove_abandoned_directories(const std::filesystem::path& parent,
                                                             std::string_view prefix);

}  // namespace ckptstream
