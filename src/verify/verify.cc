#include "verify/verify.h"

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "exec/distributed.h"
#include "exec/manifest.h"
#include "exec/output_dir.h"
#include "exec/staging.h"
#include "formats/hf_safetensors.h"
#include "io/file_lock.h"
#include "io/input_file.h"
#include "safetensors/safetensors.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

Result<std::string> hash_range(const InputFile& file, std::uint64_t begin, std::uint64_t end,
                               std::vector<std::byte>& buffer, std::uint64_t& done,
                               std::uint64_t total, const VerifyOptions& options) {
  TensorHasher hasher;
  for (std::uint64_t at = begin; at < end;) {
    CKPT_TRY(check_interrupt(options.interrupt));
    auto n = std::min<std::uint64_t>(buffer.size(), end - at);
    CKPT_TRY(file.read_at(at, std::span(buffer.data(), n)));
    hasher.update(buffer.data(), n);
    file.drop_cache(at, n);
    at += n;
    done += n;
    if (options.on_progress) options.on_progress(done, total);
  }
  return hasher.hex_digest();
}

}  // namespace

// One model directory: its manifest, files, index and checksums.
static Result<VerifyReport> verify_one_model(const fs::path& dir, const VerifyOptions& options);

Result<VerifyReport> verify_output(const fs::path& dir, const VerifyOptions& options) {
  CKPT_ASSIGN_OR_RETURN(auto report, verify_one_model(dir, options));
  // merge --lora adapter writes a PEFT adapter beside the model, with its own manifest.
  auto adapter = dir / "lora_adapter";
  std::error_code ec;
  if (fs::exists(adapter / kManifestFileName, ec)) {
    CKPT_ASSIGN_OR_RETURN(auto more, verify_one_model(adapter, options));
    report.files += more.files;
    report.tensors += more.tensors;
    report.bytes += more.bytes;
    for (auto& problem : more.problems) report.problems.push_back("lora_adapter/" + problem);
    for (auto& note : more.notes) report.notes.push_back("lora_adapter/" + note);
  }
  return report;
}

namespace {

// The file's header against the manifest's entry: its bytes (hash), and, to say what changed,
// each tensor's dtype, shape and offsets.
void check_header(const std::string& name, const InputFile& file,
                  const safetensors::FileHeader& header, const FileDigest& expected,
                  VerifyReport& report) {
  if (expected.header_xxh3_128.empty()) return;  // a version 1 manifest
  std::string bytes(header.data_start, '\0');
  if (auto read = file.read_at(0, std::as_writable_bytes(std::span(bytes.data(), bytes.size())));
      !read.ok()) {
    report.problems.push_back(read.error().message);
    return;
  }
  if (xxh3_128_of(bytes) == expected.header_xxh3_128) return;
  std::size_t before = report.problems.size();
  std::map<std::string, const TensorDigest*> want;
  for (const auto& t : expected.tensors) want[t.name] = &t;
  for (const auto& entry : header.tensors) {
    auto it = want.find(entry.name);
    if (it == want.end()) continue;  // reported with the checksums
    const TensorDigest& t = *it->second;
    std::string dtype(dtype_info(entry.dtype).safetensors_name);
    if (dtype != t.dtype)
      report.problems.push_back(name + ": tensor " + entry.name + " has dtype " + dtype +
                                ", the manifest says " + t.dtype);
    Shape shape = header_shape(entry.dtype, entry.shape);
    if (shape != t.shape)
      report.problems.push_back(name + ": tensor " + entry.name + " has shape " +
                                shape_text(shape) + ", the manifest says " + shape_text(t.shape));
    if (entry.data_begin != t.data_begin || entry.data_end != t.data_end)
      report.problems.push_back(name + ": tensor " + entry.name + " has data_offsets [" +
                                std::to_string(entry.data_begin) + ", " +
                                std::to_string(entry.data_end) + "], the manifest says [" +
                                std::to_string(t.data_begin) + ", " + std::to_string(t.data_end) +
                                "]");
  }
  if (report.problems.size() == before)
    report.problems.push_back(name + ": header differs from the one the manifest records");
}

void check_other_files(const fs::path& dir, const Manifest& manifest, VerifyReport& report) {
  for (const auto& want : manifest.other_files) {
    auto have = digest_file(dir / want.name, want.name);
    if (!have.ok()) {
      report.problems.push_back(want.name + ": written by the run, but " + have.error().message);
      continue;
    }
    ++report.other_files;
    if (have->size != want.size)
      report.problems.push_back(want.name + ": " + std::to_string(have->size) +
                                " bytes, the manifest says " + std::to_string(want.size));
    else if (have->xxh3_128 != want.xxh3_128)
      report.problems.push_back(want.name + ": changed since it was written (checksum " +
                                have->xxh3_128 + ", the manifest's " + want.xxh3_128 + ")");
  }
}

// What says that a run is writing into the directory now, or was interrupted there
// (output_dir.h).
std::vector<std::string> run_traces(const fs::path& dir) {
  std::vector<std::string> traces;
  std::error_code ec;
  if (auto holder = FileLock::holder(dir / kLockFileName))
    traces.push_back("a ckptstream run is writing into this directory now (" + *holder + ")");
  if (fs::exists(dir / kJournalFileName, ec))
    traces.push_back(std::string(kJournalFileName) +
                     ": a commit was interrupted; the next merge or convert into this directory "
                     "completes it");
  if (distributed_run_in_progress(dir))
    traces.push_back(std::string(kMarkerDirName) +
                     "/: a distributed run is not finalized (`ckptstream finalize`)");
  for (const auto& [name, holder] : list_staging(dir)) {
    if (holder) {
      traces.push_back(name + "/: files being written by a running ckptstream (" + *holder + ")");
    } else {
      traces.push_back(name +
                       "/: left by an interrupted run, not part of the model; the next merge or "
                       "convert into this directory removes it (or delete it)");
    }
  }
  return traces;
}

// What else is in the directory that looks like model data but is not part of this model, and
// the traces of runs.
void check_directory(const fs::path& dir, const std::vector<std::string>& model_files,
                     VerifyReport& report) {
  std::set<std::string> model(model_files.begin(), model_files.end());
  std::error_code ec;
  std::vector<std::string> extra;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if ((name.ends_with(".safetensors") && !model.count(name)) ||
        (name.ends_with(".safetensors.index.json") && name != kIndexFileName))
      extra.push_back(name);
  }
  std::sort(extra.begin(), extra.end());
  for (const auto& name : extra)
    report.problems.push_back(name + ": not part of the model (the index does not name it)");
  for (auto& trace : run_traces(dir)) report.problems.push_back(std::move(trace));
}

}  // namespace

static Result<VerifyReport> verify_one_model(const fs::path& dir, const VerifyOptions& options) {
  VerifyReport report;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return usage_error(dir.string() + ": " + (ec ? ec.message() : "not a directory"));
  auto manifest_path = dir / kManifestFileName;
  CKPT_ASSIGN_OR_RETURN(bool has_manifest, regular_file_exists(manifest_path));
  if (!has_manifest) {
    std::string message = manifest_path.string() +
                          ": missing (verify checks outputs written by ckptstream against it)";
    for (const auto& trace : run_traces(dir)) message += "; " + trace;
    return mismatch(message);
  }
  CKPT_ASSIGN_OR_RETURN(auto manifest, read_manifest(manifest_path));
  if (manifest.version < kManifestVersion)
    report.notes.push_back(std::string(kManifestFileName) + " is version " +
                           std::to_string(manifest.version) +
                           " (an older ckptstream): it pins tensor bytes only, not dtypes, "
                           "shapes, headers or side files");
  // A single file of another name: a LoRA adapter's adapter_model.safetensors.
  HfReadOptions read;
  read.lenient = true;
  read.check_total_size = true;
  if (manifest.files.size() == 1) read.single_file = manifest.files.front().name;
  CKPT_ASSIGN_OR_RETURN(auto model, read_hf_safetensors(dir, read));
  report.problems.insert(report.problems.end(), model.problems.begin(), model.problems.end());

  std::map<std::string, const FileDigest*> expected;
  for (const auto& file : manifest.files) expected[file.name] = &file;
  for (const auto& [name, digest] : expected)
    if (std::find(model.file_names.begin(), model.file_names.end(), name) == model.file_names.end())
      report.problems.push_back(name + ": in the manifest but not part of the model");

  std::map<std::string, const HfModelFile*> headers;  // by name: files in name order, as before
  std::uint64_t total = 0;
  for (const auto& file : model.files) {
    total += file.file.size() - file.header.data_start;
    headers.emplace(file.name, &file);
  }

  std::vector<std::byte> buffer(options.buffer_bytes);
  std::uint64_t done = 0;
  for (const auto& [name, opened] : headers) {
    const auto& file = opened->file;
    const auto& header = opened->header;
    ++report.files;
    auto digest = expected.find(name);
    if (digest == expected.end()) {
      report.problems.push_back(name + ": not in the manifest");
      continue;
    }
    if (digest->second->size != file.size())
      report.problems.push_back(name + ": " + std::to_string(file.size()) +
                                " bytes, the manifest says " +
                                std::to_string(digest->second->size));
    check_header(name, file, header, *digest->second, report);
    std::map<std::string, std::string> hashes;
    for (const auto& t : digest->second->tensors) hashes[t.name] = t.xxh3_128;
    for (const auto& entry : header.tensors) {
      ++report.tensors;
      CKPT_ASSIGN_OR_RETURN(
          auto hex, hash_range(file, header.data_start + entry.data_begin,
                               header.data_start + entry.data_end, buffer, done, total, options));
      report.bytes += entry.data_end - entry.data_begin;
      auto want = hashes.find(entry.name);
      if (want == hashes.end())
        report.problems.push_back(name + ": tensor " + entry.name + " is not in the manifest");
      else if (want->second != hex)
        report.problems.push_back(name + ": tensor " + entry.name + " checksum " + hex +
                                  " differs from the manifest's " + want->second);
      if (want != hashes.end()) hashes.erase(want);
    }
    for (const auto& [tensor, hex] : hashes)
      report.problems.push_back(name + ": tensor " + tensor +
                                " is in the manifest but not in the file");
  }
  check_other_files(dir, manifest, report);
  check_directory(dir, model.file_names, report);
  return report;
}

}  // namespace ckptstream
