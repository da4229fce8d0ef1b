// Writer of torch.save zip files (torch.md §1), byte for byte what torch 2.6's torch.save writes
// for a dict of contiguous CPU tensors, without holding any tensor in memory: the whole layout
// (every record's offset, the pickle, every header) is computed up front from names, dtypes and
// shapes; the executor then streams the tensor bytes in and CRC32s them on the way
// (torch_zip_output_file).
//
// The file, all integers little-endian (prefix = archive name, see torch_archive_name):
//
//   for each record, in this order:
//       <prefix>/data.pkl, <prefix>/byteorder, <prefix>/data/<key> for every storage key in
//       lexicographic string order ("0" "1" "10" "11" ... "2"), <prefix>/version,
//       <prefix>/.data/serialization_id
//     local header (30 bytes): 50 4B 03 04, needed 0, flags 0x0808 (0x0800 when empty),
//       method 0 (STORED), time 0, date 0, crc 0, sizes 0, name length, extra length
//     name
//     [zip64 extra, id 0x0001, only when size >= 0xFFFFFFFF or header offset >= 0xFFFFFFFF:
//       uncompressed size(8) and a compressed size of 0(8) when the size overflows, then the
//       header offset(8) when it overflows]
//     "FB" extra: 46 42, padding length(2), that many 'Z': the data starts at a multiple of 64
//     data
//     data descriptor, only for non-empty records: 50 4B 07 08, crc32(4), sizes 4+4 (or 8+8
//       when the local header has a zip64 extra)
//   central directory: one 46-byte entry per record (made by 0, needed 0, the flags, crc, sizes
//     and offset clamped to 0xFFFFFFFF, name, zip64 extra with the overflowing values in the
//     order uncompressed size, compressed size, offset; no FB padding)
//   zip64 EOCD (56 bytes, made by 0x031E, needed 0x2D), zip64 EOCD locator (20), EOCD (22)
//
// Records: data.pkl is a protocol-2 pickle of a dict (or OrderedDict) {name: tensor} in the
// given order, laid out exactly as Python's pickler lays it out (memo, batches of 1000 items);
// each tensor is `torch._utils._rebuild_tensor_v2` of a legacy typed storage (FloatStorage, ...)
// or `_rebuild_tensor_v3` of a `torch.storage.UntypedStorage` plus its dtype (uint16/32/64,
// float8*, complex32, ...), contiguous, storage offset 0, requires_grad False, device "cpu".
// Storage keys are numbered "0", "1", ... in pickling order (the given order, depth first for
// nested dicts). byteorder is "little", version "3\n". .data/serialization_id is torch's
// informational id: a combined hash of the record names (libstdc++ std::hash and unordered_set
// iteration order, as torch computes it) and a combined hash of the records' CRC32s.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/dtype.h"
#include "ckptstream/result.h"
#include "plan/plan.h"

namespace ckptstream {

// One tensor of the saved dict. `path` holds its key: one component for a flat dict
// ({"model.layers.0.weight"}), more for nested dicts ({"model", "layers.0.weight"}: a dict
// "model" inside the root dict, created at its first use, as dcp_to_torch_save's set_element
// does).
struct TorchWriteTensor {
  std::vector<std::string> path;
  DType dtype = DType::kF32;
  Shape shape;
};

// A Python object saved around the tensors, for files that hold more than a dict of tensors
// (Megatron's model_optim_rng.pt: args as an argparse.Namespace, floats, nested OrderedDicts; a
// DCP chunk: one bare tensor; a ShardedObject: a list). Pickled as CPython's pickler does at
// protocol 2: a Namespace as NEWOBJ of argparse.Namespace then BUILD with its attribute dict.
struct TorchObject {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kOrderedDict,
    kNamespace,
    kGlobal,
    kTensor
  };
  Kind kind = Kind::kNone;
  bool boolean = false;
  std::int64_t integer = 0;
  double real = 0;
  std::string text = {};  // kString; kGlobal: "module name" ("torch bfloat16")
  std::vector<std::pair<std::string, TorchObject>> entries = {};  // dicts, Namespace attributes
  std::vector<TorchObject> items = {};                            // kList
  std::size_t tensor = 0;  // kTensor: an index into plan_torch_zip's tensors (each met once)

  static TorchObject none() { return {}; }
  static TorchObject of(bool value);
  static TorchObject of(std::int64_t value);
  static TorchObject of(double value);
  static TorchObject of(std::string value);
  static TorchObject global(std::string module_and_name);
  static TorchObject tensor_at(std::size_t index);
  static TorchObject container(Kind kind);  // an empty list, dict, OrderedDict or Namespace
  // Adds `value` under `key` (dicts, Namespace) and returns it.
  TorchObject& set(std::string key, TorchObject value);
};

struct TorchWriteOptions {
  // The root container: dcp_to_torch_save saves a plain dict; a state_dict() is an OrderedDict
  // (saved without its _metadata attribute). Nested dicts are always plain dicts.
  bool ordered_dict = false;
  // When set, the saved object, whose tensors are TorchObject::tensor_at references (their
  // paths are then unused); otherwise the dict the tensors' paths make.
  std::optional<TorchObject> root;
  std::string prefix = "archive";  // the archive's directory name (torch_archive_name)
  bool serialization_id = true;    // write .data/serialization_id as torch 2.6 does
};

// The archive name torch.save gives the file at `target`: its file name without the last
// extension ("/x/model.pt" -> "model", "a.b.pt" -> "a.b"), or "archive" for non-ASCII names
// (torch writes those through a Python stream). Empty results (".pt") are refused by torch.
Result<std::string> torch_archive_name(const std::filesystem::path& target);

// One record of the archive.
struct TorchZipRecord {
  std::string name;                 // without the prefix: "data.pkl", "data/0", "version", ...
  std::uint64_t header_offset = 0;  // local header
  std::uint64_t data_offset = 0;    // a multiple of 64
  std::uint64_t size = 0;
  std::uint16_t local_extra_size = 0;     // zip64 extra + FB field
  bool zip64_size = false;                // size >= 0xFFFFFFFF
  bool zip64_offset = false;              // header_offset >= 0xFFFFFFFF
  std::uint64_t descriptor_size() const;  // 0 (empty), 16, or 24 (zip64)
  std::uint64_t end() const { return data_offset + size + descriptor_size(); }
};

// Everything about the file that is known before a tensor byte is read.
struct TorchZipLayout {
  std::string prefix;
  std::vector<TorchZipRecord> records;  // in file order
  std::string pickle;                   // data.pkl
  // Per tensor (indexes of the input vector): its record in `records`, and its storage key.
  std::vector<std::size_t> tensor_record;
  std::vector<std::string> tensor_key;
  std::uint64_t central_directory_offset = 0;
  std::uint64_t central_directory_size = 0;
  std::uint64_t file_size = 0;
  std::uint64_t name_hash = 0;  // first half of .data/serialization_id
  bool serialization_id = true;
};

// Lays out the archive for `tensors`. Errors: empty or duplicate keys, a key that is both a
// tensor and a dict, invalid UTF-8 in a key, negative dimensions, sizes that overflow, and dtypes
// torch.save cannot write with these rebuild functions (quantized dtypes).
Result<TorchZipLayout> plan_torch_zip(const std::vector<TorchWriteTensor>& tensors,
                                      const TorchWriteOptions& options);

// The bytes of the local header (signature to the end of the FB padding) of a record, and of its
// central directory entry. Exposed for tests of the zip64 logic on huge planned sizes.
std::string torch_zip_local_header(const TorchZipLayout& layout, const TorchZipRecord& record);
std::string torch_zip_central_entry(const TorchZipLayout& layout, const TorchZipRecord& record,
                                    std::uint32_t crc);

// The bytes of an archive that holds no tensor (a pickled object only): a whole torch.save file.
std::string torch_zip_bytes(const TorchZipLayout& layout);

// The bytes of an archive around its tensors' data (tensor records are consecutive, data/<key>
// in key order, after data.pkl and byteorder; the records before and after them have constant
// payloads, except .data/serialization_id, which combines every other record's CRC, so it is
// known only once the last tensor is written): everything before the first tensor's data (with
// no tensor, the whole archive), the bytes after tensor `index`'s data (its data descriptor,
// then the next tensor's local header, or after the last tensor the closing records and central
// directory), and how many bytes come after the last tensor. The framing of
// torch_zip_output_file; a file embedding archives among other bytes (a DCP .distcp file)
// strings several together.
class TorchZipFraming final : public FileFraming {
 public:
  explicit TorchZipFraming(TorchZipLayout layout);
  const TorchZipLayout& layout() const { return layout_; }
  std::size_t tensors() const;
  std::string header() const;
  std::string after_tensor(std::size_t index,
                           std::span<const WrittenTensor> written) const override;
  std::uint64_t tail_bytes() const;

 private:
  static constexpr std::size_t kFirstTensorRecord = 2;  // after data.pkl and byteorder
  std::string constant_record(std::size_t r) const;
  std::string tail(std::span<const WrittenTensor> written) const;

  TorchZipLayout layout_;
};

// The archive as an output file of a plan (plan.h), written by the executor like any other:
// `tensors` (in plan_torch_zip's input order, each holding its record's bytes) are placed at
// their records' data offsets; the header holds everything before the first tensor's data, and
// the framing writes each record's data descriptor (with the CRC-32 of the bytes the executor
// wrote), the records after the tensors, the serialization id and the central directory.
Result<OutputFile> torch_zip_output_file(std::string name, TorchZipLayout layout,
                                         std::vector<LogicalTensor> tensors);

}  // namespace ckptstream
