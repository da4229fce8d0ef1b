// The `.metadata` file of a torch.distributed.checkpoint (DCP) directory
// (docs/formats/torch.md §4.3, megatron.md §1.3): one pickle (protocol 2 to 5) of
//
//   Metadata (dataclass; megatron's MCoreMetadata subclass too), BUILD dict:
//     state_dict_metadata: {fqn: TensorStorageMetadata | BytesStorageMetadata}  (state-dict order)
//     planner_data:        {fqn: (path element, ...)} (2.0+) or None (1.13)
//     storage_data:        {MetadataIndex: _StorageInfo}
//     storage_meta, version, mcore_data, ...  (extras, ignored)
//   TensorStorageMetadata  {properties: TensorProperties, size: torch.Size, chunks: [Chunk...]}
//   ChunkStorageMetadata   {offsets: torch.Size, sizes: torch.Size}   (a box in global coordinates)
//   BytesStorageMetadata   no state (a pickled Python object, e.g. an optimizer's step count)
//   TensorProperties       BUILD tuple (dtype, layout, requires_grad, memory-format enum, pin)
//   MetadataIndex          dict key, BUILD {fqn, index, [offset]}: offset absent for byte items;
//                          equality uses fqn + offset only (index is a lookup hint)
//   _StorageInfo           {relative_path, offset, length, [transform_descriptors]}
//
// Class spellings moved between versions (torch.distributed._shard.checkpoint in 1.13,
// torch.distributed.checkpoint since 2.0; TensorProperties in _shard.sharded_tensor.metadata
// until ~2.3), enums pickle as EnumClass(value) or getattr(EnumClass, 'NAME'), and pathlib paths
// changed module in Python 3.13. So classes are matched by their final name, fields are read by
// name, and unknown extra fields are ignored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ckptstream/dtype.h"
#include "ckptstream/result.h"
#include "plan/plan.h"

namespace ckptstream::dcp {

// Where an item's bytes are: [offset, offset + length) of relative_path, after undoing
// `transforms` (e.g. "stream.zstd/1"; empty for raw bytes).
struct StorageInfo {
  std::string relative_path;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::vector<std::string> transforms;
};

// One saved box of a tensor, in global coordinates, and where storage_data puts its item.
// (Kept with the chunk rather than in a map keyed by fqn and offsets: a DeepSeek-V3-sized
// checkpoint has 725 000 chunks, and the map's keys alone took 130 MB.)
struct ChunkMeta {
  Shape offsets;
  Shape sizes;
  std::optional<StorageInfo> storage;
};

struct StateDictEntry {
  enum class Kind { kTensor, kBytes };
  std::string fqn;
  Kind kind = Kind::kTensor;
  DType dtype = DType::kF32;  // tensors only
  Shape size;                 // global shape (tensors only)
  std::vector<ChunkMeta> chunks;
  std::optional<StorageInfo> storage;  // the item storage_data keys with no offset (byte items)
};

// The lookup key of storage_data: the fqn and, for tensor chunks, the chunk's offsets.
struct ItemKey {
  std::string fqn;
  std::optional<Shape> offsets;
  auto operator<=>(const ItemKey&) const = default;
};

struct Metadata {
  std::vector<StateDictEntry> entries;  // state_dict_metadata, in pickle order
  // storage_data's items that name no entry or chunk above (unused by a reader; kept whole).
  std::map<ItemKey, StorageInfo> other_storage;
  // planner_data: fqn -> the path of the original nested state dict (elements as text).
  std::vector<std::pair<std::string, std::vector<std::string>>> planner_paths;
  std::string class_name;          // "Metadata", "MCoreMetadata"
  std::string version;             // "" when absent
  std::size_t streamed_items = 0;  // items of the two large dicts streamed (0: read whole)

  // storage_data's item for (fqn, offsets): linear in the entries; readers walking the entries
  // take ChunkMeta::storage directly.
  const StorageInfo* find(const std::string& fqn, const std::optional<Shape>& offsets) const;
};

// Parses a .metadata pickle. `label` names the file in error messages. `stream`: convert the
// items of its two large dicts (state_dict_metadata, storage_data) as they are unpickled and
// free them batch by batch (pickle::RootItemSink::streams_nested), falling back to a whole read
// for anything unusual; false: build the whole graph first (same result; tests compare them).
Result<Metadata> parse_metadata(std::span<const std::byte> bytes, const std::string& label,
                                bool stream = true);

// Reads `<dir>/.metadata` (never more than that file).
Result<Metadata> read_metadata(const std::filesystem::path& dir);

}  // namespace ckptstream::dcp
