// A private directory for bytes that must be decoded before they can be streamed (zstd-compressed
// DCP items): `<tmp>/ckptstream-scratch-XXXXXX/`, locked (io/file_lock.h) by `<dir>.lock` beside
// it, and removed with the plan that reads from it. Making one first removes those whose lock is
// free: what runs killed before they could remove theirs left.
#pragma once

#include <filesystem>
#include <optional>

#include "io/file_lock.h"

namespace ckptstream {

class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();  // removes the directory: not copyable (nor movable), as its lock is not
  // Empty when no directory could be made (the reader that needs one reports it on first use).
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::optional<FileLock> lock_;
};

}  // namespace ckptstream
