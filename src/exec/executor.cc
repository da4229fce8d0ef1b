#include "exec/executor.h"

#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/crc32.h"
#include "core/worker_pool.h"
#include "exec/file_jobs.h"
#include "exec/file_writer.h"
#include "exec/input_prefetch.h"
#include "exec/manifest.h"
#include "exec/plan_check.h"
#include "exec/staging.h"
#include "exec/tensor_writer.h"
#include "io/file_lock.h"
#include "io/input_file.h"

namespace ckptstream {
namespace {

constexpr std::uint64_t kMinWorkerBuffer = 8ull << 20;
constexpr std::uint64_t kMinWorkerWriteback = 64ull << 20;
// How far ahead of a worker its inputs are asked for (input_prefetch.h): a few windows, enough
// to keep reads queued on a cold cache; the page cache holds at most this much unread.
constexpr std::uint64_t kPrefetchBytes = 32ull << 20;
// An input at least this much in the page cache when the merge starts is left cached
// (InputFile::keep_cache): what was warm before stays warm; what we read in, we drop.
constexpr double kWarmInput = 0.9;

std::string tensor_context(const std::string& name) {
  return "tensor '" + name + "'";
}

std::uint64_t tensor_bytes(const OutputFile& file) {
  std::uint64_t total = 0;
  for (const PlacedTensor& placed : file.tensors) total += placed.data_end - placed.data_begin;
  return total;
}

std::vector<std::size_t> all_files(const Plan& plan) {
  std::vector<std::size_t> files(plan.files.size());
  std::iota(files.begin(), files.end(), std::size_t{0});
  return files;
}

Manifest manifest_of(std::vector<FileDigest> digests) {
  Manifest manifest;
  manifest.files = std::move(digests);
  return manifest;
}

}  // namespace

Result<std::vector<InputFile>> open_inputs(const Plan& plan) {
  std::vector<InputFile> inputs;
  inputs.reserve(plan.inputs.size());
  for (const auto& path : plan.inputs) {
    CKPT_ASSIGN_OR_RETURN(InputFile file, InputFile::open(path));
    // No kernel readahead: output order is not file order, and readahead past the end of one
    // fragment reads the next, often consumed and dropped already, back into the cache, where
    // it stayed (2 GiB at 20 GB). InputPrefetch asks for exactly what comes next instead.
    file.random_access();
    if (file.cached_fraction() >= kWarmInput) file.keep_cache();
    inputs.push_back(std::move(file));
  }
  return inputs;
}

Status check_plan(const Plan& plan, std::span<const InputFile> inputs) {
  CKPT_TRY(check_output_names(plan));
  for (const OutputFile& file : plan.files) {
    CKPT_TRY_CTX(check_output_file(file), file.name);
    for (const PlacedTensor& placed : file.tensors)
      CKPT_TRY_CTX(check_tensor(placed.tensor, inputs), file.name);
  }
  return {};
}

ExecOptions worker_options(const ExecOptions& options, unsigned workers) {
  ExecOptions share = options;
  share.on_progress = nullptr;  // progress goes through the shared ProgressCounter
  auto split = [&](std::uint64_t total, std::uint64_t floor) {
    return std::max(total / std::max(1u, workers), std::min(total, floor));
  };
  share.buffer_bytes = split(options.buffer_bytes, kMinWorkerBuffer);
  share.writeback_bytes = split(options.writeback_bytes, kMinWorkerWriteback);
  return share;
}

namespace {

// Checks for a stop and counts progress around another sink.
class CountingSink final : public TensorSink {
 public:
  CountingSink(TensorSink& sink, ExecContext& context) : sink_(sink), context_(context) {}
  std::span<std::byte> room() override { return sink_.room(); }
  Status take(std::uint64_t offset, std::span<const std::byte> bytes) override {
    CKPT_TRY(check_interrupt(context_.options.interrupt));
    if (context_.stop && context_.stop->load(std::memory_order_relaxed))
      return io_error("stopped: another file failed");
    CKPT_TRY(sink_.take(offset, bytes));
    if (context_.progress) context_.progress->add(bytes.size());
    return {};
  }

 private:
  TensorSink& sink_;
  ExecContext& context_;
};

Result<std::string> stream_tensor(const PlacedTensor& placed, ExecContext& context,
                                  TensorSink& sink) {
  CountingSink counting(sink, context);
  auto hash = TensorStream(placed.tensor, context).run(counting);
  if (!hash.ok()) return hash.error().with_context(tensor_context(placed.tensor.name));
  return std::move(hash).value();
}

class VisitorSink final : public TensorSink {
 public:
  VisitorSink(const WindowVisitor& visit, const OutputFile& file, const PlacedTensor& placed)
      : visit_(visit), file_(file), placed_(placed) {}
  Status take(std::uint64_t offset, std::span<const std::byte> bytes) override {
    return visit_(file_, placed_, offset, bytes);
  }

 private:
  const WindowVisitor& visit_;
  const OutputFile& file_;
  const PlacedTensor& placed_;
};

// A tensor's bytes into the file writer's buffer: produced there (room) or copied in; then the
// inputs of what comes next are asked for. For a framed file (FileFraming: a torch zip) it also
// records what the framing needs of each tensor: its CRC-32 and first bytes.
class FileSink final : public TensorSink {
 public:
  FileSink(FileWriter& writer, InputPrefetch& prefetch, std::uint64_t data_start)
      : writer_(writer), prefetch_(prefetch), data_start_(data_start) {}
  std::span<std::byte> room() override { return writer_.room(); }
  // Starts recording a tensor into `written` (null: nothing to record).
  void record(WrittenTensor* written) { written_ = written; }
  Status take(std::uint64_t offset, std::span<const std::byte> bytes) override {
    if (written_) {
      for (std::size_t i = 0; offset + i < written_->head.size() && i < bytes.size(); ++i)
        written_->head[offset + i] = bytes[i];
      written_->crc32 = crc32_update(written_->crc32, bytes);
      written_->size += bytes.size();
    }
    if (bytes.data() == writer_.room().data()) {
      CKPT_TRY(writer_.advance(bytes.size()));
    } else {
      CKPT_TRY(writer_.append(bytes));
    }
    prefetch_.advance(writer_.position() - data_start_);
    return {};
  }

 private:
  FileWriter& writer_;
  InputPrefetch& prefetch_;
  std::uint64_t data_start_;  // the header's size
  WrittenTensor* written_ = nullptr;
};

}  // namespace

Result<FileDigest> stream_file(const OutputFile& file, ExecContext& context,
                               const WindowVisitor& visit) {
  FileDigest digest = planned_digest(file);
  for (std::size_t t = 0; t < file.tensors.size(); ++t) {
    const PlacedTensor& placed = file.tensors[t];
    VisitorSink sink(visit, file, placed);
    CKPT_ASSIGN_OR_RETURN(digest.tensors[t].xxh3_128, stream_tensor(placed, context, sink));
  }
  return digest;
}

// Writes `file` into `out`, front to back: the header, each tensor (and, for a framed file, the
// bytes its framing puts after it), then syncs and closes it.
Result<FileDigest> write_file_bytes(const OutputFile& file, StagedFile& out, ExecContext& context) {
  FileDigest digest = planned_digest(file);
  InputPrefetch prefetch(file, context.inputs, kPrefetchBytes);
  prefetch.advance(0);
  {
    FileWriter writer(out, context.write_buffers);
    CKPT_TRY(writer.append(std::as_bytes(std::span(file.header))));
    FileSink sink(writer, prefetch, file.header.size());
    std::vector<WrittenTensor> written(file.framing ? file.tensors.size() : 0);
    for (std::size_t t = 0; t < file.tensors.size(); ++t) {
      const PlacedTensor& placed = file.tensors[t];
      CKPT_TRY_CTX(writer.zero_fill_to(file.header.size() + placed.data_begin),
                   tensor_context(placed.tensor.name));
      if (writer.position() != file.header.size() + placed.data_begin)
        return invalid_input(tensor_context(placed.tensor.name) +
                             ": the bytes before it overrun its data offset");
      sink.record(file.framing ? &written[t] : nullptr);
      CKPT_ASSIGN_OR_RETURN(digest.tensors[t].xxh3_128, stream_tensor(placed, context, sink));
      if (file.framing) {
        std::string framing = file.framing->after_tensor(t, std::span(written).first(t + 1));
        CKPT_TRY(writer.append(std::as_bytes(std::span(framing))));
      }
    }
    if (writer.position() != file.size())
      return invalid_input("wrote " + std::to_string(writer.position()) + " bytes of a " +
                           std::to_string(file.size()) + "-byte file");
    CKPT_TRY(writer.finish());
  }
  CKPT_TRY(out.finish());
  return digest;
}

Result<FileDigest> write_output_file(const OutputFile& file, const OutputStaging& staging,
                                     ExecContext& context) {
  CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(file.name));
  CKPT_ASSIGN_OR_RETURN(StagedFile out,
                        StagedFile::create(path, file.size(), context.options.writeback_bytes,
                                           context.options.direct_writes));
  return write_file_bytes(file, out, context);
}

Result<std::vector<FileDigest>> run_file_jobs(const Plan& plan, std::span<const std::size_t> files,
                                              std::span<const InputFile> inputs,
                                              const ExecOptions& options, const FileJob& job) {
  std::uint64_t total = 0;
  for (std::size_t index : files) total += tensor_bytes(plan.files[index]);
  unsigned workers = worker_count(options.threads, files.size());
  ExecOptions share = worker_options(options, workers);
  ProgressCounter progress(options, total);
  std::atomic<bool> stop{false};
  RecordChecker records(inputs);
  // A worker's buffers are allocated when it takes its first file.
  std::vector<std::unique_ptr<ExecContext>> contexts(workers);
  std::vector<FileDigest> digests(files.size());
  CKPT_TRY(
      run_on_workers(files.size(), workers, stop, [&](std::size_t i, unsigned worker) -> Status {
        auto& context = contexts[worker];
        if (!context)
          context = std::make_unique<ExecContext>(inputs, share, &progress, &stop, &records);
        const OutputFile& file = plan.files[files[i]];
        auto digest = job(file, *context);
        if (!digest.ok()) return digest.error().with_context(file.name);
        digests[i] = std::move(digest).value();
        return {};
      }));
  CKPT_TRY(records.finish());
  return digests;
}

Status stage_finishing_files(const Plan& plan, Manifest& manifest, const OutputStaging& staging,
                             std::vector<std::string>& commit_order) {
  manifest.other_files.clear();
  for (const SideFile& side : plan.side_files) {
    CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(side.name));
    CKPT_TRY_CTX(copy_into_staging(side.source, path), side.name);
    // What was written, read back: the manifest pins the copy, not what the source holds now.
    CKPT_ASSIGN_OR_RETURN(auto digest, digest_file(path, side.name));
    manifest.other_files.push_back(std::move(digest));
    commit_order.push_back(side.name);
  }
  auto write_text = [&](const std::string& name, const std::string& contents) -> Status {
    CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(name));
    CKPT_TRY_CTX(write_small_file(path, contents), name);
    manifest.other_files.push_back(OtherFileDigest{name, contents.size(), xxh3_128_of(contents)});
    commit_order.push_back(name);
    return {};
  };
  for (const TextFile& text : plan.text_files) CKPT_TRY(write_text(text.name, text.contents));
  if (!plan.index_json.empty()) CKPT_TRY(write_text(std::string(kIndexFileName), plan.index_json));
  std::string manifest_name(kManifestFileName);
  CKPT_ASSIGN_OR_RETURN(auto path, staging.path_for(manifest_name));
  CKPT_TRY(write_small_file(path, manifest_to_json(manifest)));
  commit_order.push_back(manifest_name);
  return {};
}

namespace {

// The plan's tensor files (names and headers) and the other files it writes (names and digests).
std::string fingerprint_of(const Plan& plan, const std::vector<OtherFileDigest>& others) {
  TensorHasher hasher;
  auto add = [&](std::string_view bytes) {
    std::uint64_t size = bytes.size();
    hasher.update(&size, sizeof size);
    hasher.update(bytes.data(), bytes.size());
  };
  for (const OutputFile& file : plan.files) {
    add(file.name);
    add(file.header);
  }
  for (const OtherFileDigest& other : others) {
    add(other.name);
    add(other.xxh3_128);
  }
  return hasher.hex_digest();
}

// The digests of the files stage_finishing_files writes, in its order, from their sources.
Result<std::vector<OtherFileDigest>> planned_other_files(const Plan& plan) {
  std::vector<OtherFileDigest> others;
  for (const SideFile& side : plan.side_files) {
    auto digest = digest_file(side.source, side.name);
    if (!digest.ok()) return digest.error().with_context(side.name);
    others.push_back(std::move(digest).value());
  }
  for (const TextFile& text : plan.text_files)
    others.push_back(OtherFileDigest{text.name, text.contents.size(), xxh3_128_of(text.contents)});
  if (!plan.index_json.empty())
    others.push_back(OtherFileDigest{std::string(kIndexFileName), plan.index_json.size(),
                                     xxh3_128_of(plan.index_json)});
  return others;
}

}  // namespace

Result<std::string> plan_fingerprint(const Plan& plan) {
  CKPT_ASSIGN_OR_RETURN(auto others, planned_other_files(plan));
  return fingerprint_of(plan, others);
}

Result<Manifest> execute_plan(const Plan& plan, const std::filesystem::path& target_dir,
                              const ExecOptions& options, const std::vector<std::string>& replace) {
  CKPT_ASSIGN_OR_RETURN(std::vector<InputFile> inputs, open_inputs(plan));
  CKPT_TRY(check_plan(plan, inputs));
  // From here on the staging directory exists; every early return removes it.
  CKPT_ASSIGN_OR_RETURN(OutputStaging staging, OutputStaging::create(target_dir));
  CKPT_ASSIGN_OR_RETURN(std::vector<FileDigest> digests,
                        run_file_jobs(plan, all_files(plan), inputs, options,
                                      [&](const OutputFile& file, ExecContext& context) {
                                        return write_output_file(file, staging, context);
                                      }));
  Manifest manifest = manifest_of(std::move(digests));
  // A lone model.safetensors is what says "complete" when there is no index: it goes in after
  // the side files, as the index does.
  bool lone_file = plan.index_json.empty() && plan.files.size() == 1;
  CommitList commit{replace, {}, "", options.after_commit_step};
  for (const OutputFile& file : plan.files)
    if (!lone_file) commit.rename.push_back(file.name);
  std::vector<std::string> finishing;
  CKPT_TRY(stage_finishing_files(plan, manifest, staging, finishing));
  commit.fingerprint = fingerprint_of(plan, manifest.other_files);
  for (const auto& name : finishing) {
    if (lone_file && name == kManifestFileName) commit.rename.push_back(plan.files.front().name);
    commit.rename.push_back(name);
  }
  CKPT_TRY(staging.commit(commit));
  return manifest;
}

namespace {

constexpr std::string_view kTempInfix = ".tmp.";

// `.<name>.tmp.<random>` beside `target`, created exclusively and locked (io/file_lock.h: a later
// run tells a live writer's file from a killed one's).
Result<std::pair<std::filesystem::path, StagedFile>> create_temp_beside(
    const std::filesystem::path& target, std::uint64_t size, const ExecOptions& options) {
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::random_device random;
  std::optional<Error> last;
  for (int attempt = 0; attempt < 16; ++attempt) {
    char suffix[24];
    std::snprintf(suffix, sizeof suffix, "%08x%04x", static_cast<unsigned>(random()),
                  static_cast<unsigned>(random() & 0xFFFF));
    std::filesystem::path temp =
        dir / ("." + target.filename().string() + std::string(kTempInfix) + suffix);
    auto file = StagedFile::create(temp, size, options.writeback_bytes, options.direct_writes);
    if (!file.ok()) {
      last = file.error();
      std::error_code ec;
      if (std::filesystem::exists(std::filesystem::symlink_status(temp, ec))) continue;
      break;
    }
    ::flock(file->fd(), LOCK_EX | LOCK_NB);
    return std::make_pair(temp, std::move(file).value());
  }
  return io_error(target.string() + ": cannot create a temporary file in " + dir.string() + ": " +
                  last->message);
}

}  // namespace

Status execute_to_file(const Plan& plan, const std::filesystem::path& target,
                       const ExecOptions& options) {
  if (plan.files.size() != 1 || !plan.index_json.empty() || !plan.side_files.empty() ||
      !plan.text_files.empty())
    return invalid_input(target.string() + ": a plan of one file, without side files, is needed");
  std::string base = target.filename().string();
  if (base.empty() || base == "." || base == "..")
    return usage_error(target.string() + ": not a file name");
  CKPT_ASSIGN_OR_RETURN(std::vector<InputFile> inputs, open_inputs(plan));
  CKPT_TRY(check_plan(plan, inputs));
  const OutputFile& file = plan.files.front();
  CKPT_ASSIGN_OR_RETURN(auto staged, create_temp_beside(target, file.size(), options));
  auto& [temp, out] = staged;
  const std::size_t only[] = {0};
  auto written = run_file_jobs(
      plan, only, inputs, options,
      [&](const OutputFile& f, ExecContext& context) { return write_file_bytes(f, out, context); });
  Status done;
  if (!written.ok()) {
    done = written.error();
  } else if (::rename(temp.c_str(), target.c_str()) != 0) {
    done = io_error(target.string() + ": cannot rename into place: " + std::strerror(errno));
  } else {
    std::filesystem::path dir = target.parent_path();
    return fsync_directory(dir.empty() ? std::filesystem::path(".") : dir);
  }
  ::unlink(temp.c_str());
  return done;
}

std::vector<std::string> remove_stale_temp_files(const std::filesystem::path& target) {
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  const std::string prefix = "." + target.filename().string() + std::string(kTempInfix);
  std::vector<std::string> removed;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (!name.starts_with(prefix) || !it->is_regular_file(type_ec) || it->is_symlink(type_ec))
      continue;
    if (FileLock::holder(it->path())) continue;  // a live writer's
    if (::unlink(it->path().c_str()) == 0) removed.push_back(name);
  }
  return removed;
}

Status stream_plan(const Plan& plan, const ExecOptions& options, const WindowVisitor& visit) {
  CKPT_ASSIGN_OR_RETURN(std::vector<InputFile> inputs, open_inputs(plan));
  CKPT_TRY(check_plan(plan, inputs));
  std::uint64_t total = 0;
  for (const OutputFile& file : plan.files) total += tensor_bytes(file);
  ProgressCounter progress(options, total);
  RecordChecker records(inputs);
  ExecContext context(inputs, worker_options(options, 1), &progress, nullptr, &records);
  for (const OutputFile& file : plan.files) {
    auto digest = stream_file(file, context, visit);
    if (!digest.ok()) return digest.error().with_context(file.name);
  }
  return records.finish();
}

Result<Manifest> hash_plan(const Plan& plan, const ExecOptions& options) {
  CKPT_ASSIGN_OR_RETURN(std::vector<InputFile> inputs, open_inputs(plan));
  CKPT_TRY(check_plan(plan, inputs));
  WindowVisitor nothing = [](const OutputFile&, const PlacedTensor&, std::uint64_t,
                             std::span<const std::byte>) { return Status{}; };
  CKPT_ASSIGN_OR_RETURN(std::vector<FileDigest> digests,
                        run_file_jobs(plan, all_files(plan), inputs, options,
                                      [&](const OutputFile& file, ExecContext& context) {
                                        return stream_file(file, context, nothing);
                                      }));
  Manifest manifest = manifest_of(std::move(digests));
  CKPT_ASSIGN_OR_RETURN(manifest.other_files, planned_other_files(plan));
  return manifest;
}

}  // namespace ckptstream
