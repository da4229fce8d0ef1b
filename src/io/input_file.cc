#include "io/input_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <boost/iostreams/device/mapped_file.hpp>
#include <cerrno>
#include <cstring>

// cachestat(2) is 451 in the unified syscall table (Linux 6.5); older headers lack the name.
#if !defined(SYS_cachestat) && (defined(__x86_64__) || defined(__aarch64__))
#define SYS_cachestat 451
#endif

namespace ckptstream {

struct InputFile::Mapping {
  boost::iostreams::mapped_file_source source;
};

InputFile::InputFile(std::filesystem::path path, int fd, std::uint64_t size)
    : path_(std::move(path)), fd_(fd), size_(size) {}

InputFile::InputFile(InputFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      size_(other.size_),
      keep_cache_(other.keep_cache_),
      mapping_(std::move(other.mapping_)) {}

InputFile& InputFile::operator=(InputFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = other.size_;
    keep_cache_ = other.keep_cache_;
    mapping_ = std::move(other.mapping_);
  }
  return *this;
}

InputFile::~InputFile() {
  mapping_.reset();
  if (fd_ >= 0) ::close(fd_);
}

const char* file_type_name(unsigned mode) {
  switch (mode & S_IFMT) {
    case S_IFDIR:
      return "a directory";
    case S_IFIFO:
      return "a FIFO";
    case S_IFCHR:
      return "a character device";
    case S_IFBLK:
      return "a block device";
    case S_IFSOCK:
      return "a socket";
    default:
      return "not a regular file";
  }
}

Result<InputFile> InputFile::open(const std::filesystem::path& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return io_error(path.string() + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return io_error(path.string() + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid_input(path.string() + ": not a regular file (" + file_type_name(st.st_mode) +
                         ")");
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return InputFile(path, fd, static_cast<std::uint64_t>(st.st_size));
}

Result<std::string> read_small_file(const std::filesystem::path& path, std::uint64_t max_bytes) {
  CKPT_ASSIGN_OR_RETURN(auto file, InputFile::open(path));
  if (file.size() > max_bytes)
    return invalid_input(path.string() + ": " + std::to_string(file.size()) +
                         " bytes, more than the " + std::to_string(max_bytes) +
                         " such a file may have");
  std::string text(file.size(), '\0');
  CKPT_TRY(file.read_at(0, std::as_writable_bytes(std::span(text.data(), text.size()))));
  return text;
}

Result<bool> regular_file_exists(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return false;
    return io_error(path.string() + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode))
    return invalid_input(path.string() + ": not a regular file (" + file_type_name(st.st_mode) +
                         ")");
  return true;
}

Status InputFile::read_at(std::uint64_t offset, std::span<std::byte> out) const {
  if (!range_fits(offset, out.size(), size_)) {
    return invalid_input(path_.string() + ": truncated: needs bytes [" + std::to_string(offset) +
                         ", " + std::to_string(offset + out.size()) + ") but the file has " +
                         std::to_string(size_));
  }
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n =
        ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_error(path_.string() + ": read failed: " + std::strerror(errno));
    }
    if (n == 0) return invalid_input(path_.string() + ": file shrank while reading");
    done += static_cast<std::size_t>(n);
  }
  return {};
}

Result<std::span<const std::byte>> InputFile::mapped() const {
  if (size_ == 0) return std::span<const std::byte>();
  if (!mapping_) {
    auto mapping = std::make_unique<Mapping>();
    try {
      mapping->source.open(path_.string());
    } catch (const std::exception& e) {
      return io_error(path_.string() + ": cannot map: " + e.what());
    }
    // Metadata reads through the map (zip headers, pickles) are scattered: no read-around on
    // faults, which would pull up to read_ahead_kb (8 MiB on these disks) of tensor data into
    // the page cache and into RSS for every header. Bulk tensor bytes use pread, not the map.
    ::madvise(const_cast<char*>(mapping->source.data()), mapping->source.size(), MADV_RANDOM);
    mapping_ = std::move(mapping);
  }
  return std::span<const std::byte>(reinterpret_cast<const std::byte*>(mapping_->source.data()),
                                    mapping_->source.size());
}

void InputFile::random_access() const {
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM);
}

bool InputFile::cached(std::uint64_t offset, std::uint64_t length) const {
  std::byte probe[64];
  std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(length, sizeof probe));
  if (want == 0 || !range_fits(offset, want, size_)) return false;
  iovec iov{probe, want};
  // RWF_NOWAIT: fails with EAGAIN instead of waiting for the disk.
  ssize_t n = ::preadv2(fd_, &iov, 1, static_cast<off_t>(offset), RWF_NOWAIT);
  return n == static_cast<ssize_t>(want);
}

void InputFile::will_need(std::uint64_t offset, std::uint64_t length) const {
  ::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_WILLNEED);
}

double InputFile::cached_fraction() const {
  if (size_ == 0) return 1.0;
  const std::uint64_t pages = (size_ + 4095) / 4096;
#ifdef SYS_cachestat
  struct {
    std::uint64_t offset, length;
  } range{0, 0};  // 0: to the end of the file
  struct {
    std::uint64_t cache, dirty, writeback, evicted, recently_evicted;
  } stat{};
  if (::syscall(SYS_cachestat, fd_, &range, &stat, 0) == 0)
    return std::min(1.0, static_cast<double>(stat.cache) / static_cast<double>(pages));
#endif
  constexpr std::uint64_t kProbes = 64;
  std::uint64_t hits = 0, probes = std::min(kProbes, pages);
  for (std::uint64_t i = 0; i < probes; ++i) hits += cached(pages * i / probes * 4096, 1) ? 1 : 0;
  return static_cast<double>(hits) / static_cast<double>(probes);
}

void InputFile::drop_cache(std::uint64_t offset, std::uint64_t length) const {
  if (keep_cache_) return;
  ::posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_DONTNEED);
}

}  // namespace ckptstream
