// The checksum manifest written beside the model: `ckptstream.manifest.json` in the output
// directory, written last, so that its presence means the run that wrote it completed.
//
//   {"format": "ckptstream-manifest", "version": 2, "hash": "xxh3-128",
//    "files": {"model-00001-of-00002.safetensors": {
//        "size": 123, "header_xxh3_128": "<32 hex digits>",
//        "tensors": {"model.embed_tokens.weight": {"dtype": "BF16", "shape": [4, 2],
//                    "data_offsets": [0, 16], "xxh3_128": "<32 hex digits>"}, ...}}, ...},
//    "other_files": {"config.json": {"size": 700, "xxh3_128": "<32 hex digits>"}, ...}}
//
// A tensor file is pinned by its size, the XXH3-128 of its header bytes (the 8-byte length and
// the JSON, padding included: every dtype, shape and offset) and each tensor's dtype, shape,
// data_offsets (as in the header) and the XXH3-128 of its data bytes. "other_files" are the
// other files the run wrote (side files copied from the checkpoint, generated files, the index),
// each by size and XXH3-128 of its bytes. Hashes are XXH3-128 with seed 0, as the canonical
// big-endian hex of XXH128_canonicalFromHash (what `xxhsum -H2` prints).
//
// Version 1 (ckptstream before December 2026) had only "size" and, per tensor, the hash string;
// it is still read: its FileDigest has no header hash and its tensors no dtype or shape.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/result.h"
#include "plan/plan.h"

namespace ckptstream {

inline constexpr std::string_view kManifestFileName = "ckptstream.manifest.json";
inline constexpr int kManifestVersion = 2;

struct TensorDigest {
  std::string name;
  std::string xxh3_128;          // 32 lowercase hex digits of the tensor's bytes as written
  std::string dtype;             // safetensors dtype name ("BF16"); empty when read from version 1
  Shape shape;                   // as the header says it (header_shape in plan.h)
  std::uint64_t data_begin = 0;  // safetensors data_offsets
  std::uint64_t data_end = 0;
};

struct FileDigest {
  std::string name;
  std::uint64_t size = 0;
  std::string header_xxh3_128;        // empty when read from version 1
  std::vector<TensorDigest> tensors;  // in file order
};

// A file written beside the tensor files: side file, generated text file, index.
struct OtherFileDigest {
  std::string name;
  std::uint64_t size = 0;
  std::string xxh3_128;
};

struct Manifest {
  int version = kManifestVersion;
  std::vector<FileDigest> files;
  std::vector<OtherFileDigest> other_files;
};

std::string manifest_to_json(const Manifest& manifest);
// Parses manifest text; `where` names it in errors.
Result<Manifest> parse_manifest(std::string_view text, const std::string& where);
Result<Manifest> read_manifest(const std::filesystem::path& path);

// What the plan says of a tensor file before a byte is written: name, size, header hash, and each
// tensor's dtype, shape and offsets (the tensor hashes are left empty).
FileDigest planned_digest(const OutputFile& file);

// XXH3-128 of bytes in the manifest's hex form.
std::string xxh3_128_of(std::string_view bytes);

// Incremental XXH3-128 in the manifest's hex form.
class TensorHasher {
 public:
  TensorHasher();
  ~TensorHasher();
  TensorHasher(const TensorHasher&) = delete;
  TensorHasher& operator=(const TensorHasher&) = delete;
  void update(const void* data, std::size_t size);
  std::string hex_digest() const;

 private:
  void* state_;
};

// The digest of a file on disk (size and XXH3-128), read with bounded memory.
Result<OtherFileDigest> digest_file(const std::filesystem::path& path, std::string name);

}  // namespace ckptstream
