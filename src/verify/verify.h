// `verify`: re-reads a written model directory and checks it against its manifest
// (ckptstream.manifest.json, exec/manifest.h): the safetensors rules of every file, the index
// invariants (every weight_map entry is in its file, no tensor missing from the index,
// total_size), the file set and sizes, every header's bytes (so every dtype, shape and offset),
// every tensor's XXH3-128 recomputed from the bytes on disk, and the side files, generated files
// and index against their recorded checksums. It also reports what in the directory is not part
// of the model: safetensors files the index does not name, staging directories and commit
// journals of interrupted runs, a run writing there now (exec/output_dir.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "core/interrupt.h"

namespace ckptstream {

struct VerifyReport {
  std::size_t files = 0;
  std::size_t tensors = 0;
  std::uint64_t bytes = 0;
  std::size_t other_files = 0;        // side files, generated files and the index, checked
  std::vector<std::string> problems;  // empty when everything matched
  std::vector<std::string> notes;     // what could not be checked, and why
};

struct VerifyOptions {
  std::uint64_t buffer_bytes = 8ull << 20;
  std::function<void(std::uint64_t, std::uint64_t)> on_progress;
  const InterruptFlag* interrupt = nullptr;  // checked at every buffer; may be null
};

// Errors are for what prevents checking at all (no such directory); differences found are
// listed in VerifyReport::problems.
Result<VerifyReport> verify_output(const std::filesystem::path& dir, const VerifyOptions& options);

}  // namespace ckptstream
