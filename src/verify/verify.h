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

#include "ckptstream/ckptstream.h"
#include "ckptstream/result.h"
#include "core/interrupt.h"

namespace ckptstream {

// VerifyReport, VerifyOptions and verify_output(dir, options) are declared in the public header:
// errors are for what prevents checking at all (no such directory); differences found are
// listed in VerifyReport::problems.

}  // namespace ckptstream
