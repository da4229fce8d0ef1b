// The checksum manifest written beside the model: `ckptstream.manifest.json` in the output
// directory.
//   {"format": "ckptstream-manifest", "version": 1, "hash": "xxh3-128",
//    "files": {"model-00001-of-00002.safetensors": {"size": 123,
//              "tensors": {"model.embed_tokens.weight": "<32 hex digits>", ...}}, ...}}
// The hash of a tensor is XXH3-128 (seed 0) of its data bytes as stored in the safetensors file,
// printed as the canonical big-endian hex of XXH128_canonicalFromHash.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "ckptstream/result.h"
#include "exec/executor.h"

namespace ckptstream {

inline constexpr std::string_view kManifestFileName = "ckptstream.manifest.json";

std::string manifest_to_json(const Manifest& manifest);
Result<Manifest> read_manifest(const std::filesystem::path& path);

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

}  // namespace ckptstream
