// The items of a DCP checkpoint's .distcp files (docs/formats/torch.md §4.2, §4.5).
//
// A tensor chunk occupies [offset, offset + length) of its file (StorageInfo). With the default
// SerializationFormat.TORCH_SAVE those bytes are a complete torch.save zip of the chunk alone:
//
//   [item: PK\3\4 ... archive/data.pkl ... archive/data/0 ... central directory ... EOCD]
//
// whose zip offsets (and 64-byte alignment) are relative to the item start, so the archive is
// parsed with positional reads of the item's byte range (its headers and data.pkl only: the file
// is never mapped, and read without readahead), and the chunk becomes a TensorRef at the absolute
// file offset of its storage record. data.pkl is one
// torch._utils._rebuild_tensor_v2/v3 call; its storage offset and strides are honoured.
//
// Stream transforms (transform_descriptors, "name[@domain][/version]"): the item's bytes are
// transformed data; the descriptor applied last by the writer is listed last and undone first.
// Only "stream.zstd/1" (torch >= 2.7 ZStandard: one zstd frame) is known: it is decompressed
// with bounded buffers into a scratch file, and the chunk is read from that file instead.
// SerializationFormat.SAFETENSORS items (one safetensors blob per file) are not supported.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>

#include "ckptstream/result.h"
#include "dcp/dcp_metadata.h"
#include "io/input_file.h"
#include "plan/plan.h"

namespace ckptstream::dcp {

// Where a chunk's elements are: `ref` views `file` (ref.input is left 0 for the caller to set).
struct ChunkLocation {
  std::filesystem::path file;  // the .distcp file, or a scratch file after a transform
  TensorRef ref;
};

// Every descriptor must be "stream.zstd" with major version 1; others (e.g. "stream.rot13/1",
// "stream.zstd/2") are unsupported errors naming the descriptor.
Status check_transforms(const std::vector<std::string>& descriptors);

class ItemReader {
 public:
  // `dir` holds the .distcp files; decoded items are written under `scratch_dir` (created on
  // first use).
  ItemReader(std::filesystem::path dir, std::filesystem::path scratch_dir);

  // Locates the chunk of tensor `entry` saved at `chunk.offsets`, stored as `info`: its zip is
  // parsed, and its dtype and shape must equal the metadata's. Threads may call it at once (they
  // share the open files: one cache per thread would hold threads x 64 descriptors).
  Result<ChunkLocation> tensor_chunk(const StateDictEntry& entry, const ChunkMeta& chunk,
                                     const StorageInfo& info);

 private:
  // Open files are cached (at most a few dozen); callers share ownership.
  Result<std::shared_ptr<const InputFile>> open(const std::filesystem::path& path);
  Result<std::filesystem::path> decode_to_scratch(const StorageInfo& info, const InputFile& file,
                                                  const std::string& what);

  std::filesystem::path dir_;
  std::filesystem::path scratch_dir_;
  std::shared_mutex mutex_;  // guards files_
  std::map<std::filesystem::path, std::shared_ptr<const InputFile>> files_;
};

}  // namespace ckptstream::dcp
