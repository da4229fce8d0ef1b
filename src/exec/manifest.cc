#include "exec/manifest.h"

#include <xxhash.h>

#include <simdjson.h>

#include <new>

#include "core/json_text.h"

namespace ckptstream {
namespace {

bool is_hex_digest(std::string_view text) {
  if (text.size() != 32) return false;
  for (char c : text)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

Result<FileDigest> parse_file_entry(std::string_view name, simdjson::dom::element entry) {
  FileDigest file;
  file.name = std::string(name);
  simdjson::dom::object object;
  std::uint64_t size = 0;
  simdjson::dom::object tensors;
  if (entry.get(object) || object["size"].get(size) || object["tensors"].get(tensors))
    return invalid_input("file \"" + file.name + "\": needs \"size\" (integer) and \"tensors\"");
  file.size = size;
  for (auto field : tensors) {
    std::string_view digest;
    if (field.value.get(digest) || !is_hex_digest(digest)) {
      return invalid_input("file \"" + file.name + "\": tensor \"" + std::string(field.key) +
                           "\": expected 32 lowercase hex digits");
    }
    file.tensors.push_back({std::string(field.key), std::string(digest)});
  }
  return file;
}

Result<Manifest> parse_manifest(simdjson::dom::element root) {
  std::string_view format, hash;
  std::uint64_t version = 0;
  if (root["format"].get(format) || format != "ckptstream-manifest")
    return invalid_input("not a ckptstream manifest (\"format\" is not \"ckptstream-manifest\")");
  if (root["version"].get(version) || version != 1)
    return unsupported("unsupported manifest version (expected 1)");
  if (root["hash"].get(hash) || hash != "xxh3-128")
    return unsupported("unsupported manifest hash (expected \"xxh3-128\")");
  simdjson::dom::object files;
  if (root["files"].get(files)) return invalid_input("\"files\" is missing or not an object");
  Manifest manifest;
  for (auto field : files) {
    CKPT_ASSIGN_OR_RETURN(FileDigest file, parse_file_entry(field.key, field.value));
    manifest.files.push_back(std::move(file));
  }
  return manifest;
}

}  // namespace

std::string manifest_to_json(const Manifest& manifest) {
  std::string out =
      "{\n  \"format\": \"ckptstream-manifest\",\n  \"version\": 1,\n  \"hash\": \"xxh3-128\",\n"
      "  \"files\": {";
  for (std::size_t f = 0; f < manifest.files.size(); ++f) {
    const FileDigest& file = manifest.files[f];
    out += f == 0 ? "\n    " : ",\n    ";
    out += json_quote(file.name);
    out += ": {\n      \"size\": " + std::to_string(file.size) + ",\n      \"tensors\": {";
    for (std::size_t t = 0; t < file.tensors.size(); ++t) {
      out += t == 0 ? "\n        " : ",\n        ";
      out += json_quote(file.tensors[t].name);
      out += ": ";
      out += json_quote(file.tensors[t].xxh3_128);
    }
    out += file.tensors.empty() ? "}\n    }" : "\n      }\n    }";
  }
  out += manifest.files.empty() ? "}\n}\n" : "\n  }\n}\n";
  return out;
}

Result<Manifest> read_manifest(const std::filesystem::path& path) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto error = parser.load(path.string()).get(root)) {
    return (error == simdjson::IO_ERROR
                ? io_error("cannot read")
                : invalid_input(std::string("invalid JSON: ") + simdjson::error_message(error)))
        .with_context(path.string());
  }
  auto manifest = parse_manifest(root);
  if (!manifest.ok()) return manifest.error().with_context(path.string());
  return manifest;
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

}  // namespace ckptstream
