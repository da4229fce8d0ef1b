// What a torch.save file holds, as plain values: every tensor reachable from the saved object,
// named by its dotted path ("model.layers.0.weight", "optim.state.0.exp_avg", "list.3"), with the
// location of its storage in the file. Nothing is executed and no tensor byte is read here.
// Byte-level formats: docs/formats/torch.md §1 (zip), §2 (legacy), §3 (DTensor).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/dtype.h"
#include "ckptstream/result.h"
#include "plan/plan.h"

namespace ckptstream::pickle {
struct Value;
class BlockPool;
}  // namespace ckptstream::pickle

namespace ckptstream {

// One storage record: a contiguous run of bytes in the file.
struct StorageRecord {
  std::string key;                // "0", "1", ... (zip) or the pointer string (legacy)
  DType dtype = DType::kU8;       // dtype of the storage (uint8 for UntypedStorage)
  std::uint64_t file_offset = 0;  // absolute offset of the first byte in the file
  std::uint64_t nbytes = 0;
  // The zip record's CRC-32 (its central directory entry), when the writer computed one.
  std::optional<std::uint32_t> crc32;
};

// DTensor placement of one mesh dimension (torch.md §3.1).
struct Placement {
  enum class Kind { kShard, kReplicate, kPartial, kStridedShard, kOther };
  Kind kind = Kind::kReplicate;
  std::int64_t dim = 0;           // Shard / _StridedShard
  std::int64_t split_factor = 1;  // _StridedShard
  std::string reduce_op;          // Partial
  std::string class_name;         // kOther: the class as written, for messages
};

// "Shard(0)", "Replicate()", "Partial(sum)", "_StridedShard(dim=0, split_factor=2)".
std::string to_string(const Placement& placement);

struct DeviceMeshInfo {
  std::string device_type;             // "cuda", "cpu", ...
  Shape shape;                         // mesh shape
  std::vector<std::int64_t> ranks;     // row-major, numel(shape) entries
  std::vector<std::string> dim_names;  // empty when unnamed
};

struct DTensorInfo {
  DType dtype = DType::kF32;
  Shape global_shape;
  Shape global_stride;
  std::vector<Placement> placements;  // one per mesh dimension
  // Shared by the tensors of one file that share a DeviceMesh object (all of them, usually):
  // a large model has tens of thousands of DTensors per rank file.
  std::shared_ptr<const DeviceMeshInfo> mesh;
};

struct TorchTensor {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;  // of the stored (local) tensor
  Shape strides;
  std::int64_t storage_offset = 0;  // elements
  std::size_t storage = 0;          // index into TorchCheckpoint::storages
  bool requires_grad = false;
  bool is_parameter = false;
  bool conj = false;  // metadata bits of _rebuild_tensor_v2/v3; values need conj/neg
  bool neg = false;
  std::string subclass;                // "module.Class" for tensor subclasses, "" otherwise
  std::optional<DTensorInfo> dtensor;  // DTensor: the fields above describe its local shard
};

struct TorchCheckpoint {
  enum class Format { kZip, kLegacy };
  std::filesystem::path path;
  Format format = Format::kZip;
  // The zip's top directory: torch.save names it after the file it was saved as, without the
  // extension ("model_world_size_4_rank_2"), or "archive" when saved to a stream. Empty: legacy.
  std::string archive_name;
  bool big_endian = false;  // byteorder record says "big"
  std::vector<StorageRecord> storages;
  std::vector<TorchTensor> tensors;           // in the order the pickle yields them
  std::shared_ptr<const pickle::Value> root;  // the whole unpickled object
  // Zip records whose data offset was computed from sampled local headers, not read
  // (TorchReadOptions::sampled_headers).
  std::size_t computed_offsets = 0;

  // A TensorRef for tensors[i] (input index `input` in the plan).
  TensorRef ref(std::size_t i, std::size_t input) const;
};

// Reads the metadata of a torch.save file (zip or legacy format). Errors name the file and the
// problem: truncated or corrupt zip, compressed entries, TorchScript archives, the old tar
// format, unknown opcodes, missing storage records, views reaching past their storage.
Result<TorchCheckpoint> read_torch_file(const std::filesystem::path& path);

struct TorchReadOptions {
  // Read only this many of a zip file's local headers and compute the other records' data
  // offsets from torch's alignment rule, when the sample follows it (zip::LocalHeaders); 0: read
  // every header. For plans that read no tensor data.
  std::size_t sampled_headers = 0;
  // Interpret the saved dict's items as they are unpickled and free their graph batch by batch
  // (pickle::unpickle_streaming): memory holds a batch, not the file's whole graph. The tensors
  // are the same; TorchCheckpoint::root is then the (emptied) saved dict. For callers that need
  // only the tensors.
  bool stream_items = false;
};

// read_torch_file in two steps, so that a caller reading many files can overlap the first step
// of some (I/O: the zip directory, every local header, the data.pkl bytes) with the second of
// another (CPU and memory: the pickle graph, its storages and tensors), and bound how many
// graphs (or, streamed, batches of one) are in memory at a time.
class PendingTorchFile {
 public:
  static Result<PendingTorchFile> open(const std::filesystem::path& path,
                                       const TorchReadOptions& options = {});  // step 1
  // Step 2; `pool` recycles the pickle graph's memory from one file to the next.
  Result<TorchCheckpoint> read(std::shared_ptr<pickle::BlockPool> pool = nullptr) &&;

  PendingTorchFile(PendingTorchFile&&) noexcept;
  PendingTorchFile& operator=(PendingTorchFile&&) noexcept;
  ~PendingTorchFile();

  class Reader;

 private:
  explicit PendingTorchFile(std::unique_ptr<Reader> reader);
  std::unique_ptr<Reader> reader_;
};

// The view of tensor `t` whose storage is `s`, in input file `input`: file offsets as the record
// gives them (a caller that embeds the file elsewhere adds its own offset).
TensorRef tensor_ref(const TorchTensor& t, const StorageRecord& s, bool big_endian,
                     std::size_t input);

}  // namespace ckptstream
