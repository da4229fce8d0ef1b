#include "exec/manifest.h"

#include <xxhash.h>

#include <simdjson.h>

#include <algorithm>
#include <memory>
#include <new>

#include "core/json_text.h"
#include "io/input_file.h"

namespace ckptstream {
namespace {

// A manifest lists every tensor of the model; a few hundred bytes each at most.
constexpr std::uint64_t kMaxManifestBytes = 1ull << 30;

bool is_hex_digest(std::string_view text) {
  if (text.size() != 32) return false;
  for (char c : text)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

Result<std::string> hex_field(simdjson::dom::element value, const std::string& what) {
  std::string_view digest;
  if (value.get(digest) || !is_hex_digest(digest))
    return invalid_input(what + ": expected 32 lowercase hex digits");
  return std::string(digest);
}

Result<std::vector<std::uint64_t>> uint_list(simdjson::dom::element value,
                                             const std::string& what) {
  simdjson::dom::array array;
  if (value.get(array)) return invalid_input(what + ": expected a list of integers");
  std::vector<std::uint64_t> out;
  for (auto item : array) {
    std::uint64_t n = 0;
    if (item.get(n)) return invalid_input(what + ": expected a list of integers");
    out.push_back(n);
  }
  return out;
}

Result<TensorDigest> parse_tensor_entry(std::string_view name, simdjson::dom::element entry,
                                        int version, const std::string& where) {
  TensorDigest tensor;
  tensor.name = std::string(name);
  std::string what = where + ": tensor \"" + tensor.name + "\"";
  if (version == 1) {
    CKPT_ASSIGN_OR_RETURN(tensor.xxh3_128, hex_field(entry, what));
    return tensor;
  }
  simdjson::dom::object object;
  simdjson::dom::element hash, shape, offsets;
  std::string_view dtype;
  if (entry.get(object) || object["dtype"].get(dtype) || object["shape"].get(shape) ||
      object["data_offsets"].get(offsets) || object["xxh3_128"].get(hash))
    return invalid_input(what + ": needs \"dtype\", \"shape\", \"data_offsets\", \"xxh3_128\"");
  tensor.dtype = std::string(dtype);
  CKPT_ASSIGN_OR_RETURN(tensor.xxh3_128, hex_field(hash, what));
  CKPT_ASSIGN_OR_RETURN(auto dims, uint_list(shape, what + ": shape"));
  for (auto d : dims) {
    if (d > static_cast<std::uint64_t>(INT64_MAX)) return invalid_input(what + ": shape too large");
    tensor.shape.push_back(static_cast<std::int64_t>(d));
  }
  CKPT_ASSIGN_OR_RETURN(auto range, uint_list(offsets, what + ": data_offsets"));
  if (range.size() != 2 || range[0] > range[1])
    return invalid_input(what + ": data_offsets must be [begin, end] with begin <= end");
  tensor.data_begin = range[0];
  tensor.data_end = range[1];
  return tensor;
}

Result<FileDigest> parse_file_entry(std::string_view name, simdjson::dom::element entry,
                                    int version, const std::string& where) {
  FileDigest file;
  file.name = std::string(name);
  std::string what = where + ": file \"" + file.name + "\"";
  simdjson::dom::object object;
  std::uint64_t size = 0;
  simdjson::dom::object tensors;
  if (entry.get(object) || object["size"].get(size) || object["tensors"].get(tensors))
    return invalid_input(what + ": needs \"size\" (integer) and \"tensors\"");
  file.size = size;
  if (version >= 2) {
    simdjson::dom::element header;
    if (object["header_xxh3_128"].get(header))
      return invalid_input(what + ": needs \"header_xxh3_128\"");
    CKPT_ASSIGN_OR_RETURN(file.header_xxh3_128, hex_field(header, what + ": header_xxh3_128"));
  }
  for (auto field : tensors) {
    CKPT_ASSIGN_OR_RETURN(TensorDigest tensor,
                          parse_tensor_entry(field.key, field.value, version, what));
    file.tensors.push_back(std::move(tensor));
  }
  return file;
}

Result<OtherFileDigest> parse_other_entry(std::string_view name, simdjson::dom::element entry,
                                          const std::string& where) {
  OtherFileDigest file;
  file.name = std::string(name);
  std::string what = where + ": other file \"" + file.name + "\"";
  simdjson::dom::object object;
  simdjson::dom::element hash;
  if (entry.get(object) || object["size"].get(file.size) || object["xxh3_128"].get(hash))
    return invalid_input(what + ": needs \"size\" (integer) and \"xxh3_128\"");
  CKPT_ASSIGN_OR_RETURN(file.xxh3_128, hex_field(hash, what));
  return file;
}

}  // namespace

std::string manifest_to_json(const Manifest& manifest) {
  std::string out = "{\n  \"format\": \"ckptstream-manifest\",\n  \"version\": " +
                    std::to_string(kManifestVersion) +
                    ",\n  \"hash\": \"xxh3-128\",\n  \"files\": {";
  for (std::size_t f = 0; f < manifest.files.size(); ++f) {
    const FileDigest& file = manifest.files[f];
    out += f == 0 ? "\n    " : ",\n    ";
    out += json_quote(file.name);
    out += ": {\n      \"size\": " + std::to_string(file.size) +
           ",\n      \"header_xxh3_128\": \"" + file.header_xxh3_128 + "\",\n      \"tensors\": {";
    for (std::size_t t = 0; t < file.tensors.size(); ++t) {
      const TensorDigest& tensor = file.tensors[t];
      out += t == 0 ? "\n        " : ",\n        ";
      out += json_quote(tensor.name);
      out += ": {\"dtype\": " + json_quote(tensor.dtype) +
             ", \"shape\": " + shape_text(tensor.shape) + ", \"data_offsets\": [" +
             std::to_string(tensor.data_begin) + ", " + std::to_string(tensor.data_end) +
             "], \"xxh3_128\": \"" + tensor.xxh3_128 + "\"}";
    }
    out += file.tensors.empty() ? "}\n    }" : "\n      }\n    }";
  }
  out += manifest.files.empty() ? "},\n" : "\n  },\n";
  out += "  \"other_files\": {";
  for (std::size_t f = 0; f < manifest.other_files.size(); ++f) {
    const OtherFileDigest& file = manifest.other_files[f];
    out += f == 0 ? "\n    " : ",\n    ";
    out += json_quote(file.name) + ": {\"size\": " + std::to_string(file.size) +
           ", \"xxh3_128\": \"" + file.xxh3_128 + "\"}";
  }
  out += manifest.other_files.empty() ? "}\n}\n" : "\n  }\n}\n";
  return out;
}

Result<Manifest> parse_manifest(std::string_view text, const std::string& where) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  simdjson::padded_string padded(text);
  if (auto error = parser.parse(padded).get(root))
    return invalid_input(where + ": invalid JSON: " + simdjson::error_message(error));
  std::string_view format, hash;
  std::uint64_t version = 0;
  if (root["format"].get(format) || format != "ckptstream-manifest")
    return invalid_input(where +
                         ": not a ckptstream manifest (\"format\" is not \"ckptstream-manifest\")");
  if (root["version"].get(version) || version < 1 ||
      version > static_cast<std::uint64_t>(kManifestVersion))
    return unsupported(where + ": unsupported manifest version (this ckptstream reads 1 to " +
                       std::to_string(kManifestVersion) + ")");
  if (root["hash"].get(hash) || hash != "xxh3-128")
    return unsupported(where + ": unsupported manifest hash (expected \"xxh3-128\")");
  simdjson::dom::object files;
  if (root["files"].get(files))
    return invalid_input(where + ": \"files\" is missing or not an object");
  Manifest manifest;
  manifest.version = static_cast<int>(version);
  for (auto field : files) {
    CKPT_ASSIGN_OR_RETURN(FileDigest file,
                          parse_file_entry(field.key, field.value, manifest.version, where));
    manifest.files.push_back(std::move(file));
  }
  if (manifest.version >= 2) {
    simdjson::dom::object others;
    if (root["other_files"].get(others))
      return invalid_input(where + ": \"other_files\" is missing or not an object");
    for (auto field : others) {
      CKPT_ASSIGN_OR_RETURN(OtherFileDigest file, parse_other_entry(field.key, field.value, where));
      manifest.other_files.push_back(std::move(file));
    }
  }
  return manifest;
}

Result<Manifest> read_manifest(const std::filesystem::path& path) {
  CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(path, kMaxManifestBytes));
  return parse_manifest(text, path.string());
}

FileDigest planned_digest(const OutputFile& file) {
  FileDigest digest{file.name, file.size(), xxh3_128_of(file.header), {}};
  digest.tensors.reserve(file.tensors.size());
  for (const PlacedTensor& placed : file.tensors) {
    const LogicalTensor& t = placed.tensor;
    digest.tensors.push_back(TensorDigest{t.name, "",
                                          std::string(dtype_info(t.dtype).safetensors_name),
                                          header_shape(t), placed.data_begin, placed.data_end});
  }
  return digest;
}

std::string xxh3_128_of(std::string_view bytes) {
  TensorHasher hasher;
  hasher.update(bytes.data(), bytes.size());
  return hasher.hex_digest();
}

TensorHasher::TensorHasher() : state_(XXH3_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_));
}

TensorHasher::~TensorHasher() {
  XXH3_freeState(static_cast<XXH3_state_t*>(state_));
}

void TensorHasher::update(const void* data, std::size_t size) {
  if (size > 0) XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), data, size);
}

std::string TensorHasher::hex_digest() const {
  XXH128_hash_t hash = XXH3_128bits_digest(static_cast<XXH3_state_t*>(state_));
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, hash);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char byte : canonical.digest) {
    hex += kHex[byte >> 4];
    hex += kHex[byte & 15];
  }
  return hex;
}

Result<OtherFileDigest> digest_file(const std::filesystem::path& path, std::string name) {
  CKPT_ASSIGN_OR_RETURN(auto file, InputFile::open(path));
  constexpr std::size_t kChunk = 1 << 20;
  auto buffer = std::make_unique_for_overwrite<std::byte[]>(kChunk);
  TensorHasher hasher;
  for (std::uint64_t at = 0; at < file.size();) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, file.size() - at));
    CKPT_TRY(file.read_at(at, std::span(buffer.get(), n)));
    hasher.update(buffer.get(), n);
    at += n;
  }
  return OtherFileDigest{std::move(name), file.size(), hasher.hex_digest()};
}

}  // namespace ckptstream
