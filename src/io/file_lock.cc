#include "io/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <set>
#include <thread>

namespace ckptstream {
namespace {

// The holder's line, at most a few hundred bytes; "" when unreadable.
std::string read_owner(int fd) {
  char text[512];
  ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
  if (n <= 0) return "";
  std::string line(text, static_cast<std::size_t>(n));
  while (!line.empty() && (line.back() == '\n' || line.back() == '\0')) line.pop_back();
  return line;
}

bool same_file(int fd, const std::filesystem::path& path) {
  struct stat by_fd {
  }, by_path{};
  return ::fstat(fd, &by_fd) == 0 && ::stat(path.c_str(), &by_path) == 0 &&
         by_fd.st_dev == by_path.st_dev && by_fd.st_ino == by_path.st_ino;
}

// "pid 1234 on host-name: merge, since 2026-12-06 20:51:03 UTC".
std::string lock_owner_line(std::string_view owner) {
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);
  std::time_t now = std::time(nullptr);
  char when[64] = "";
  std::tm utc{};
  if (::gmtime_r(&now, &utc)) std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &utc);
  return "pid " + std::to_string(::getpid()) + " on " + host + ": " + std::string(owner) +
         ", since " + when;
}

constexpr std::string_view kLockSuffix = ".lock";

std::uint64_t bytes_under(const std::filesystem::path& dir) {
  std::uint64_t total = 0;
  std::error_code ec;
  for (std::filesystem::recursive_directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) total += it->file_size(size_ec);
  }
  return total;
}

}  // namespace

Result<FileLock> FileLock::acquire(const std::filesystem::path& path, Mode mode,
                                   std::string_view owner, std::string_view what,
                                   std::chrono::milliseconds wait) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  // The file may be removed by its last holder between our open and our flock: then the lock we
  // took is on a file nobody else will find, and we start again on the new one.
  for (int attempt = 0; attempt < 64; ++attempt) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
      return io_error(path.string() + ": cannot create a lock file: " + std::strerror(errno));
    int operation = (mode == Mode::kExclusive ? LOCK_EX : LOCK_SH) | LOCK_NB;
    int rc;
    do {
      rc = ::flock(fd, operation);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      int err = errno;
      std::string holder = read_owner(fd);
      ::close(fd);
      if (err != EWOULDBLOCK)
        return io_error(path.string() + ": cannot lock: " + std::strerror(err));
      if (std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        --attempt;  // waiting is not a replaced file
        continue;
      }
      return io_error(std::string(what) + " is in use by another ckptstream run (" +
                      (holder.empty() ? "its holder did not say who it is" : holder) +
                      "); wait for it to finish, or stop it");
    }
    if (!same_file(fd, path)) {
      ::close(fd);
      continue;
    }
    struct stat st {};
    bool empty = ::fstat(fd, &st) == 0 && st.st_size == 0;
    if (mode == Mode::kExclusive || empty) {
      std::string line = lock_owner_line(owner) + "\n";
      if (::ftruncate(fd, 0) == 0) {
        ssize_t ignored = ::pwrite(fd, line.data(), line.size(), 0);
        (void)ignored;  // the line only makes messages better
      }
    }
    return FileLock(path, fd);
  }
  return io_error(path.string() + ": cannot lock: the lock file keeps being replaced");
}

std::optional<std::string> FileLock::holder(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return std::nullopt;
  std::optional<std::string> held;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
    std::string line = read_owner(fd);
    held = line.empty() ? "its holder did not say who it is" : line;
  }
  ::close(fd);  // releases the lock if we took it
  return held;
}

FileLock::FileLock(FileLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

FileLock::~FileLock() {
  release();
}

bool FileLock::convert(Mode mode) {
  if (fd_ < 0) return false;
  if (::flock(fd_, (mode == Mode::kExclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0) return true;
  ::close(std::exchange(fd_, -1));
  return false;
}

void FileLock::release() {
  if (fd_ < 0) return;
  // Removed only by its last holder: a shared holder that cannot take it exclusively leaves it.
  if (::flock(fd_, LOCK_EX | LOCK_NB) == 0 && same_file(fd_, path_)) ::unlink(path_.c_str());
  ::close(std::exchange(fd_, -1));
}

std::filesystem::path lock_file_of(const std::filesystem::path& dir) {
  return dir.string() + std::string(kLockSuffix);
}

Result<FileLock> make_locked_directory(const std::filesystem::path& dir, std::string_view owner,
                                       std::chrono::milliseconds wait, unsigned mode) {
  CKPT_ASSIGN_OR_RETURN(
      FileLock lock,
      FileLock::acquire(lock_file_of(dir), FileLock::Mode::kExclusive, owner, dir.string(), wait));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);  // a gone process's of the same name: its lock was free
  if (::mkdir(dir.c_str(), static_cast<mode_t>(mode)) != 0)
    return io_error(dir.string() + ": cannot create: " + std::strerror(errno));
  return lock;
}

std::vector<AbandonedDirectory> remove_abandoned_directories(const std::filesystem::path& parent,
                                                             std::string_view prefix) {
  std::set<std::string> names;  // without the lock suffix
  std::error_code ec;
  for (std::filesystem::directory_iterator it(parent, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (!name.starts_with(prefix)) continue;
    if (name.ends_with(kLockSuffix)) name.resize(name.size() - kLockSuffix.size());
    names.insert(std::move(name));
  }
  std::vector<AbandonedDirectory> removed;
  for (const auto& name : names) {
    auto dir = parent / name;
    // Held while it is looked at: no process can start using this name meanwhile.
    auto lock =
        FileLock::acquire(lock_file_of(dir), FileLock::Mode::kExclusive, "cleanup", dir.string());
    if (!lock.ok()) continue;  // a live process's
    std::error_code type_ec;
    if (!std::filesystem::is_directory(std::filesystem::symlink_status(dir, type_ec))) continue;
    std::uint64_t bytes = bytes_under(dir);
    std::filesystem::remove_all(dir, type_ec);
    if (!type_ec) removed.push_back(AbandonedDirectory{name, bytes});
  }
  return removed;
}

}  // namespace ckptstream
