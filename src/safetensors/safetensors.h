// safetensors, the output format (landscape.md §1):
//   [0, 8)        N, u64 little-endian: header length
//   [8, 8+N)      JSON header, UTF-8, space-padded to a multiple of 8:
//                 {"__metadata__":{"format":"pt"},"name":{"dtype":"F32","shape":[2,3],
//                  "data_offsets":[BEGIN,END]},...}
//   [8+N, EOF)    byte buffer; data_offsets are relative to its start; row-major little-endian.
// The reference writer sorts tensors by dtype (safetensors enum order, descending) then name
// (ascending, bytewise), packs them back to back, and writes compact JSON with __metadata__ first
// and tensors in offset order. The reference reader rejects holes, overlaps, trailing bytes,
// headers over 100 MB and sizes that do not match shape x dtype.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/result.h"
#include "io/input_file.h"
#include "plan/plan.h"

namespace ckptstream::safetensors {

inline constexpr std::uint64_t kMaxHeaderSize = 100'000'000;
inline constexpr std::uint64_t kDefaultMaxShardSize = 5'000'000'000;  // huggingface_hub "5GB"
// A max_shard_size that never splits: one model.safetensors (a PEFT adapter, a torch.save file).
inline constexpr std::uint64_t kOneFile = UINT64_MAX;
using ckptstream::kIndexFileName;  // plan.h

// --- reading -------------------------------------------------------------------------------

struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;  // torch's shape: for F4 (kF4E2M1FNx2) the header's last dimension halved
  std::uint64_t data_begin = 0;  // relative to data_start
  std::uint64_t data_end = 0;
};

struct FileHeader {
  std::uint64_t data_start = 0;  // 8 + N
  std::map<std::string, std::string> metadata;
  std::vector<TensorEntry> tensors;  // sorted by data_begin
};

// Parses and validates a safetensors file's header with every rule of the reference reader.
Result<FileHeader> read_header(const InputFile& file);

struct Index {
  std::uint64_t total_size = 0;
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> file, as written
};
Result<Index> read_index(const std::filesystem::path& path);

// --- writing -------------------------------------------------------------------------------

// "5GB" (10^9 units), "5GiB" (2^30), "500MB", "100KB", "1000" (bytes).
Result<std::uint64_t> parse_size(std::string_view text);
// parse_size, refusing sizes below one byte (no file could hold anything).
Result<std::uint64_t> parse_max_shard_size(std::string_view text);

struct OutputOptions {
  std::uint64_t max_shard_size = kDefaultMaxShardSize;
};

// Splits `tensors` (in state-dict order) into files with huggingface_hub's greedy rule, orders
// and places each file's tensors as the reference writer does, builds every header and, when
// there is more than one file, the index JSON (transformers' json.dumps(indent=2,
// sort_keys=True) + "\n"). Fills Plan::files, Plan::index_json and Plan::total_size.
Status plan_output(std::vector<LogicalTensor> tensors, const OutputOptions& options, Plan& plan);

// The header bytes (8-byte length + padded JSON) of one file holding `tensors` in this order.
std::string build_header(const std::vector<PlacedTensor>& tensors);

}  // namespace ckptstream::safetensors
