#include "exec/staging.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <set>

namespace ckptstream {
namespace {

Error errno_error(const std::filesystem::path& path, const std::string& what, int err) {
  return io_error(path.string() + ": " + what + ": " + std::strerror(err));
}

Result<int> create_exclusive(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error(path, "cannot create", errno);
  return fd;
}

Status write_all(int fd, const std::filesystem::path& path, std::uint64_t offset,
                 const std::byte* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error(path, "write failed", errno);
    }
    data += n;
    size -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  return {};
}

Status sync_and_close(int fd, const std::filesystem::path& path) {
  if (::fdatasync(fd) != 0) {
    int err = errno;
    ::close(fd);
    return errno_error(path, "fdatasync failed", err);
  }
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);  // clean now: free the cache it used
  if (::close(fd) != 0) return errno_error(path, "close failed", errno);
  return {};
}

Status fsync_directory(const std::filesystem::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno_error(dir, "cannot open directory", errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL) return errno_error(dir, "fsync failed", err);
  return {};
}

// Copies with read/write when copy_file_range cannot (other file system, old kernel).
Status copy_by_reading(int in, int out, std::uint64_t from, std::uint64_t size,
                       const std::filesystem::path& source, const std::filesystem::path& dest) {
  constexpr std::size_t kChunk = 1 << 20;
  auto buffer = std::make_unique_for_overwrite<std::byte[]>(kChunk);
  while (from < size) {
    ssize_t n = ::pread(in, buffer.get(), std::min<std::uint64_t>(kChunk, size - from),
                        static_cast<off_t>(from));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_error(source, "read failed", errno);
    if (n == 0) return invalid_input(source.string() + ": file shrank while copying");
    CKPT_TRY(write_all(out, dest, from, buffer.get(), static_cast<std::size_t>(n)));
    from += static_cast<std::uint64_t>(n);
  }
  return {};
}

Status copy_fds(int in, int out, std::uint64_t size, const std::filesystem::path& source,
                const std::filesystem::path& dest) {
  std::uint64_t done = 0;
  while (done < size) {
    loff_t in_off = static_cast<loff_t>(done), out_off = static_cast<loff_t>(done);
    ssize_t n = ::copy_file_range(in, &in_off, out, &out_off, size - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP ||
                  errno == EBADF))
      return copy_by_reading(in, out, done, size, source, dest);
    if (n < 0) return errno_error(source, "copy failed", errno);
    if (n == 0) return invalid_input(source.string() + ": file shrank while copying");
    done += static_cast<std::uint64_t>(n);
  }
  return {};
}

}  // namespace

// --- OutputStaging -------------------------------------------------------------------------

OutputStaging::OutputStaging(std::filesystem::path target, std::filesystem::path dir)
    : target_(std::move(target)), dir_(std::move(dir)) {}

OutputStaging::OutputStaging(OutputStaging&& other) noexcept
    : target_(std::move(other.target_)), dir_(std::exchange(other.dir_, {})) {}

OutputStaging::~OutputStaging() {
  if (dir_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

Result<OutputStaging> OutputStaging::create(const std::filesystem::path& target_dir,
                                            const std::string& tag) {
  std::error_code ec;
  if (!std::filesystem::is_directory(target_dir, ec))
    return io_error(target_dir.string() + ": not a directory");
  auto dir = target_dir /
             (".ckptstream-staging-" + (tag.empty() ? "" : tag + "-") + std::to_string(::getpid()));
  std::filesystem::remove_all(dir, ec);  // a leftover of a killed run that had our pid
  if (::mkdir(dir.c_str(), 0755) != 0) return errno_error(dir, "cannot create", errno);
  return OutputStaging(target_dir, dir);
}

Result<std::filesystem::path> OutputStaging::path_for(const std::string& name) const {
  auto path = dir_ / name;
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  if (ec) return io_error(path.parent_path().string() + ": cannot create: " + ec.message());
  return path;
}

Status OutputStaging::commit(const std::vector<std::string>& names) {
  std::set<std::filesystem::path> directories{target_};
  for (const auto& name : names) {
    auto destination = target_ / name;
    std::error_code ec;
    std::filesystem::create_directories(destination.parent_path(), ec);
    directories.insert(destination.parent_path());
    std::filesystem::rename(dir_ / name, destination, ec);
    if (ec) return io_error(destination.string() + ": cannot rename into place: " + ec.message());
  }
  for (const auto& dir : directories) CKPT_TRY(fsync_directory(dir));
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  dir_.clear();
  return {};
}

Status OutputStaging::commit_one(const std::string& name) const {
  auto destination = target_ / name;
  std::error_code ec;
  std::filesystem::create_directories(destination.parent_path(), ec);
  std::filesystem::rename(dir_ / name, destination, ec);
  if (ec) return io_error(destination.string() + ": cannot rename into place: " + ec.message());
  return fsync_directory(destination.parent_path());
}

// --- StagedFile ----------------------------------------------------------------------------

StagedFile::StagedFile(std::filesystem::path path, int fd, std::uint64_t writeback_bytes)
    : path_(std::move(path)), fd_(fd), writeback_bytes_(writeback_bytes) {}

StagedFile::StagedFile(StagedFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      direct_fd_(std::exchange(other.direct_fd_, -1)),
      writeback_bytes_(other.writeback_bytes_),
      window_begin_(other.window_begin_),
      previous_begin_(other.previous_begin_),
      previous_end_(other.previous_end_) {}

StagedFile::~StagedFile() {
  if (fd_ >= 0) ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

Error StagedFile::os_error(const std::string& what) const {
  return errno_error(path_, what, errno);
}

Result<StagedFile> StagedFile::create(const std::filesystem::path& path, std::uint64_t size,
                                      std::uint64_t writeback_bytes, bool direct_writes) {
  CKPT_ASSIGN_OR_RETURN(int fd, create_exclusive(path));
  StagedFile file(path, fd, writeback_bytes);
  if (size == 0) return file;
  if (::fallocate(fd, 0, 0, static_cast<off_t>(size)) != 0) {
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
      return file.os_error("cannot preallocate " + std::to_string(size) + " bytes");
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) return file.os_error("cannot resize");
  }
  // Refused (EINVAL) by file systems without direct I/O: then every write is buffered.
  if (direct_writes && size >= kDirectAlign)
    file.direct_fd_ = ::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  return file;
}

Status StagedFile::write_at(std::uint64_t offset, const std::byte* data, std::size_t size) {
  CKPT_ASSIGN_OR_RETURN(std::size_t direct, write_direct(offset, data, size));
  if (direct == size) return {};
  CKPT_TRY(write_all(fd_, path_, offset + direct, data + direct, size - direct));
  return advance_writeback(offset + size);
}

Result<std::size_t> StagedFile::write_direct(std::uint64_t offset, const std::byte* data,
                                             std::size_t size) {
  std::size_t done = 0;
  auto aligned = [](std::uint64_t value) { return value % kDirectAlign == 0; };
  // The memory's alignment is left to the kernel to check (it depends on the device): ours is
  // always aligned, and a refusal only means falling back.
  if (direct_fd_ < 0 || !aligned(offset)) return done;
  std::size_t whole = size - size % kDirectAlign;
  while (done < whole) {
    ssize_t n = ::pwrite(direct_fd_, data + done, whole - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL) {
      // The file system takes O_DIRECT opens but not these writes (a larger block size, or no
      // direct I/O at all): nothing was written; from here on everything goes through the cache.
      ::close(std::exchange(direct_fd_, -1));
      break;
    }
    if (n < 0) return os_error("write failed");
    done += static_cast<std::size_t>(n);
    if (!aligned(done)) break;  // a short write off the block grid: the rest goes buffered
  }
  return done;
}

// Every writeback_bytes: start writeback of the new window, wait for the previous one (started
// one window earlier, so mostly done) and drop its now clean pages.
Status StagedFile::advance_writeback(std::uint64_t written_end) {
  if (writeback_bytes_ == 0 || written_end < window_begin_ + writeback_bytes_) return {};
  auto range = [](std::uint64_t begin, std::uint64_t end) {
    return std::pair{static_cast<off_t>(begin), static_cast<off_t>(end - begin)};
  };
  auto [begin, length] = range(window_begin_, written_end);
  if (::sync_file_range(fd_, begin, length, SYNC_FILE_RANGE_WRITE) != 0 &&
      (errno == EIO || errno == ENOSPC))
    return os_error("writeback failed");
  if (previous_end_ > previous_begin_) {
    auto [prev_begin, prev_length] = range(previous_begin_, previous_end_);
    unsigned flags =
        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
    if (::sync_file_range(fd_, prev_begin, prev_length, flags) != 0 &&
        (errno == EIO || errno == ENOSPC))
      return os_error("writeback failed");
    ::posix_fadvise(fd_, prev_begin, prev_length, POSIX_FADV_DONTNEED);
  }
  previous_begin_ = window_begin_;
  previous_end_ = written_end;
  window_begin_ = written_end;
  return {};
}

Status StagedFile::finish() {
  if (direct_fd_ >= 0) ::close(std::exchange(direct_fd_, -1));
  int fd = std::exchange(fd_, -1);
  return sync_and_close(fd, path_);
}

// --- small helpers -------------------------------------------------------------------------

Status copy_into_staging(const std::filesystem::path& source,
                         const std::filesystem::path& destination) {
  int in = ::open(source.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return errno_error(source, "cannot open", errno);
  struct stat st {};
  if (::fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(in);
    return io_error(source.string() + ": not a readable regular file");
  }
  auto out = create_exclusive(destination);
  if (!out.ok()) {
    ::close(in);
    return out.error();
  }
  Status copied = copy_fds(in, *out, static_cast<std::uint64_t>(st.st_size), source, destination);
  ::close(in);
  if (!copied.ok()) {
    ::close(*out);
    return copied;
  }
  return sync_and_close(*out, destination);
}

Status write_small_file(const std::filesystem::path& path, const std::string& text) {
  CKPT_ASSIGN_OR_RETURN(int fd, create_exclusive(path));
  Status written =
      write_all(fd, path, 0, reinterpret_cast<const std::byte*>(text.data()), text.size());
  if (!written.ok()) {
    ::close(fd);
    return written;
  }
  return sync_and_close(fd, path);
}

}  // namespace ckptstream
