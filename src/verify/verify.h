// `verify`: re-reads a written model directory and checks it against its manifest
// (ckptstream.manifest.json): the safetensors rules of every file, the index invariants (every
// weight_map entry is in its file, no tensor missing from the index, total_size), the file set and
// sizes, and every tensor's XXH3-128 recomputed from the bytes on disk.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "ckptstream/result.h"

namespace ckptstream {

struct VerifyReport {
  std::size_t files = 0;
  std::size_t tensors = 0;
  std::uint64_t bytes = 0;
  std::vector<std::string> problems;  // empty when everything matched
};

struct VerifyOptions {
  std::uint64_t buffer_bytes = 8ull << 20;
  std::function<void(std::uint64_t, std::uint64_t)> on_progress;
};

// Errors are for what prevents checking at all (no such directory); differences found are
// listed in VerifyReport::problems.
Result<VerifyReport> verify_output(const std::filesystem::path& dir, const VerifyOptions& options);

}  // namespace ckptstream
