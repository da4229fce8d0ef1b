#include "exec/staging.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <simdjson.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>

#include "core/json_text.h"
#include "exec/plan_check.h"
#include "io/input_file.h"

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

namespace {

constexpr std::string_view kJournalFormat = "ckptstream-commit";

std::string journal_json(const std::string& staging, const CommitList& list) {
  auto names = [](const std::vector<std::string>& values) {
    std::string out = "[";
    for (std::size_t i = 0; i < values.size(); ++i)
      out += (i ? ",\n    " : "\n    ") + json_quote(values[i]);
    return out + (values.empty() ? "]" : "\n  ]");
  };
  return "{\n  \"format\": \"" + std::string(kJournalFormat) + "\",\n  \"version\": 1,\n" +
         "  \"staging\": " + json_quote(staging) +
         ",\n  \"fingerprint\": " + json_quote(list.fingerprint) +
         ",\n  \"remove\": " + names(list.remove) + ",\n  \"rename\": " + names(list.rename) +
         "\n}\n";
}

struct Journal {
  std::string staging;
  CommitList list;
};

Result<Journal> read_journal(const std::filesystem::path& path) {
  CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(path));
  auto bad = [&](const std::string& what) {
    return invalid_input(path.string() + ": " + what +
                         "; it records an interrupted commit: delete it and the model files "
                         "beside it, then run again");
  };
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  std::string_view format, staging, fingerprint;
  if (parser.parse(text).get(root) || root["format"].get(format) || format != kJournalFormat ||
      root["staging"].get(staging) || root["fingerprint"].get(fingerprint))
    return bad("not a ckptstream commit journal");
  Journal journal;
  journal.staging = std::string(staging);
  journal.list.fingerprint = std::string(fingerprint);
  if (!staging.starts_with(kStagingPrefix) || staging.find('/') != std::string_view::npos)
    return bad("names a staging directory that is not one: " + journal.staging);
  for (auto [key, out] :
       {std::pair{"remove", &journal.list.remove}, std::pair{"rename", &journal.list.rename}}) {
    simdjson::dom::array array;
    if (root[key].get(array)) return bad(std::string("no \"") + key + "\" list");
    for (auto item : array) {
      std::string_view name;
      if (item.get(name) || !is_safe_relative_name(std::string(name)))
        return bad(std::string("\"") + key + "\" names a path outside the target");
      out->emplace_back(name);
    }
  }
  return journal;
}

Status remove_file(const std::filesystem::path& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    return errno_error(path, "cannot remove", errno);
  return {};
}

// Steps 2-4 of the commit (staging.h), from the journal at `journal_path`; renames that were
// done already (the file is gone from staging and present in the target) are skipped.
Result<std::size_t> apply_commit(const std::filesystem::path& target, const std::string& staging,
                                 const CommitList& list) {
  const std::filesystem::path staging_dir = target / staging;
  std::set<std::filesystem::path> directories{target};
  auto step = [&] {
    if (list.after_step) list.after_step();
  };
  const std::set<std::string> renamed_names(list.rename.begin(), list.rename.end());
  bool removed = false;
  for (const auto& name : list.remove) {
    // An earlier model's file of a name this commit writes (its index, its manifest): removed
    // only while this commit's file is still staged, never once it is in place (a commit
    // completed again after an interruption).
    std::error_code ec;
    if (renamed_names.count(name) && !std::filesystem::exists(staging_dir / name, ec)) continue;
    CKPT_TRY(remove_file(target / name));
    directories.insert((target / name).parent_path());
    removed = true;
    step();
  }
  // The removals (and the journal's rename) on disk before any new file is in place: after a
  // power loss the target may lack both models' completion markers, never show a mix of them.
  if (removed)
    for (const auto& dir : directories) CKPT_TRY(fsync_directory(dir));
  std::size_t renamed = 0;
  for (const auto& name : list.rename) {
    auto source = staging_dir / name, destination = target / name;
    std::error_code ec;
    if (!std::filesystem::exists(source, ec)) {
      if (std::filesystem::exists(destination, ec)) continue;  // moved before the interruption
      return io_error(destination.string() +
                      ": cannot complete the commit: it is neither staged nor in place");
    }
    std::filesystem::create_directories(destination.parent_path(), ec);
    directories.insert(destination.parent_path());
    std::filesystem::rename(source, destination, ec);
    if (ec) return io_error(destination.string() + ": cannot rename into place: " + ec.message());
    ++renamed;
    step();
  }
  for (const auto& dir : directories) CKPT_TRY(fsync_directory(dir));
  // Not synced: a journal that comes back after a power loss is completed again, which changes
  // nothing (every rename is done, and removals skip what is in place).
  CKPT_TRY(remove_file(target / kJournalFileName));
  std::error_code ec;
  std::filesystem::remove_all(staging_dir, ec);
  return renamed;
}

}  // namespace

OutputStaging::OutputStaging(std::filesystem::path target, std::filesystem::path dir, FileLock lock)
    : target_(std::move(target)), dir_(std::move(dir)), lock_(std::move(lock)) {}

OutputStaging::OutputStaging(OutputStaging&& other) noexcept
    : target_(std::move(other.target_)),
      dir_(std::exchange(other.dir_, {})),
      lock_(std::move(other.lock_)) {}

OutputStaging::~OutputStaging() {
  if (dir_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
  lock_.release();  // and its file, last
}

Result<OutputStaging> OutputStaging::create(const std::filesystem::path& target_dir,
                                            const std::string& tag) {
  std::error_code ec;
  if (!std::filesystem::is_directory(target_dir, ec))
    return io_error(target_dir.string() + ": not a directory");
  std::string name =
      std::string(kStagingPrefix) + (tag.empty() ? "" : tag + "-") + std::to_string(::getpid());
  auto dir = target_dir / name;
  CKPT_ASSIGN_OR_RETURN(FileLock lock,
                        make_locked_directory(dir, "staging", std::chrono::seconds(10)));
  return OutputStaging(target_dir, dir, std::move(lock));
}

Result<std::filesystem::path> OutputStaging::path_for(const std::string& name) const {
  auto path = dir_ / name;
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  if (ec) return io_error(path.parent_path().string() + ": cannot create: " + ec.message());
  return path;
}

Status OutputStaging::commit(const CommitList& list) {
  std::string staging = dir_.filename().string();
  auto journal = dir_ / ".commit-journal.json";
  CKPT_TRY(write_small_file(journal, journal_json(staging, list)));
  std::error_code ec;
  std::filesystem::rename(journal, target_ / kJournalFileName, ec);
  if (ec)
    return io_error((target_ / kJournalFileName).string() + ": cannot write: " + ec.message());
  // From here on a failure leaves the journal: the next run completes the commit. (Its rename
  // reaches the disk with the removals'; a power loss before that leaves no complete-looking
  // target, and the next run refuses it clearly instead of completing it.)
  CKPT_TRY(apply_commit(target_, staging, list));
  dir_.clear();
  lock_.release();
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

Result<std::optional<InterruptedCommit>> finish_interrupted_commit(
    const std::filesystem::path& target) {
  auto path = target / kJournalFileName;
  CKPT_ASSIGN_OR_RETURN(bool present, regular_file_exists(path));
  if (!present) return std::optional<InterruptedCommit>();
  CKPT_ASSIGN_OR_RETURN(Journal journal, read_journal(path));
  CKPT_ASSIGN_OR_RETURN(std::size_t renamed, apply_commit(target, journal.staging, journal.list));
  return std::optional<InterruptedCommit>(
      InterruptedCommit{journal.staging, journal.list.fingerprint, renamed});
}

std::vector<std::pair<std::string, std::optional<std::string>>> list_staging(
    const std::filesystem::path& target) {
  std::vector<std::pair<std::string, std::optional<std::string>>> found;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(target, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (name.starts_with(kStagingPrefix) && it->is_directory(type_ec))
      found.emplace_back(name, FileLock::holder(lock_file_of(it->path())));
  }
  std::sort(found.begin(), found.end());
  return found;
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

Status fsync_directory(const std::filesystem::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno_error(dir, "cannot open directory", errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL) return errno_error(dir, "fsync failed", err);
  return {};
}

}  // namespace ckptstream
