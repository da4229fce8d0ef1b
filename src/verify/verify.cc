#include "verify/verify.h"

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "exec/manifest.h"
#include "io/input_file.h"
#include "safetensors/safetensors.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

// The model files of `dir` and, when sharded, the index that names them.
struct ModelFiles {
  std::vector<std::string> files;
  std::optional<safetensors::Index> index;
};

Result<ModelFiles> find_model_files(const fs::path& dir, const Manifest& manifest,
                                    VerifyReport& report) {
  ModelFiles model;
  auto index_path = dir / safetensors::kIndexFileName;
  if (fs::exists(index_path)) {
    auto index = safetensors::read_index(index_path);
    if (!index.ok()) {
      report.problems.push_back(index.error().message);
      return model;
    }
    std::set<std::string> seen;
    for (const auto& [tensor, file] : index->weight_map)
      if (seen.insert(file).second) model.files.push_back(file);
    model.index = std::move(*index);
    return model;
  }
  if (fs::exists(dir / "model.safetensors")) {
    model.files.push_back("model.safetensors");
    return model;
  }
  // A single file of another name: a LoRA adapter's adapter_model.safetensors.
  if (manifest.files.size() == 1) {
    model.files.push_back(manifest.files.front().name);
    return model;
  }
  return mismatch(dir.string() + ": neither model.safetensors nor " +
                  std::string(safetensors::kIndexFileName) + " is there");
}

// Index invariants: every entry is in the file it names, every tensor of a file is in the index,
// total_size is the sum of tensor bytes.
void check_index(const safetensors::Index& index,
                 const std::map<std::string, safetensors::FileHeader>& headers,
                 VerifyReport& report) {
  std::map<std::string, std::string> where;
  for (const auto& [tensor, file] : index.weight_map) where[tensor] = file;
  std::uint64_t total = 0;
  for (const auto& [file, header] : headers) {
    for (const auto& entry : header.tensors) {
      total += entry.data_end - entry.data_begin;
      auto it = where.find(entry.name);
      if (it == where.end())
        report.problems.push_back(file + ": tensor " + entry.name + " is not in the index");
      else if (it->second != file)
        report.problems.push_back(file + ": tensor " + entry.name + " is indexed under " +
                                  it->second);
    }
  }
  for (const auto& entry : index.weight_map) {
    const auto& [tensor, file] = entry;
    auto header = headers.find(file);
    if (header == headers.end()) continue;  // unreadable file, reported already
    const auto& tensors = header->second.tensors;
    if (std::none_of(tensors.begin(), tensors.end(),
                     [&](auto& e) { return e.name == entry.first; }))
      report.problems.push_back(std::string(safetensors::kIndexFileName) + ": " + tensor +
                                " is indexed in " + file + " but that file does not hold it");
  }
  if (total != index.total_size)
    report.problems.push_back(std::string(safetensors::kIndexFileName) + ": total_size " +
                              std::to_string(index.total_size) + " but the tensors hold " +
                              std::to_string(total) + " bytes");
}

Result<std::string> hash_range(const InputFile& file, std::uint64_t begin, std::uint64_t end,
                               std::vector<std::byte>& buffer, std::uint64_t& done,
                               std::uint64_t total, const VerifyOptions& options) {
  TensorHasher hasher;
  for (std::uint64_t at = begin; at < end;) {
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
  if (fs::exists(adapter / kManifestFileName)) {
    CKPT_ASSIGN_OR_RETURN(auto more, verify_one_model(adapter, options));
    report.files += more.files;
    report.tensors += more.tensors;
    report.bytes += more.bytes;
    for (auto& problem : more.problems) report.problems.push_back("lora_adapter/" + problem);
  }
  return report;
}

static Result<VerifyReport> verify_one_model(const fs::path& dir, const VerifyOptions& options) {
  VerifyReport report;
  if (!fs::is_directory(dir)) return usage_error(dir.string() + ": not a directory");
  auto manifest_path = dir / kManifestFileName;
  if (!fs::exists(manifest_path))
    return mismatch(manifest_path.string() +
                    ": missing (verify checks outputs written by ckptstream against it)");
  CKPT_ASSIGN_OR_RETURN(auto manifest, read_manifest(manifest_path));
  CKPT_ASSIGN_OR_RETURN(auto model, find_model_files(dir, manifest, report));

  std::map<std::string, const FileDigest*> expected;
  for (const auto& file : manifest.files) expected[file.name] = &file;
  for (const auto& [name, digest] : expected)
    if (std::find(model.files.begin(), model.files.end(), name) == model.files.end())
      report.problems.push_back(name + ": in the manifest but not part of the model");

  std::map<std::string, safetensors::FileHeader> headers;
  std::map<std::string, InputFile> inputs;
  std::uint64_t total = 0;
  for (const auto& name : model.files) {
    auto file = InputFile::open(dir / name);
    if (!file.ok()) {
      report.problems.push_back(file.error().message);
      continue;
    }
    auto header = safetensors::read_header(*file);
    if (!header.ok()) {
      report.problems.push_back(header.error().message);
      continue;
    }
    total += file->size() - header->data_start;
    headers.emplace(name, std::move(*header));
    inputs.emplace(name, std::move(*file));
  }
  if (model.index) check_index(*model.index, headers, report);

  std::vector<std::byte> buffer(options.buffer_bytes);
  std::uint64_t done = 0;
  for (const auto& [name, header] : headers) {
    const auto& file = inputs.at(name);
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
  return report;
}

}  // namespace ckptstream
