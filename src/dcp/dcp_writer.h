// Writing a torch.distributed.checkpoint (DCP) directory as torch's FileSystemWriter with
// torch.save serialization writes it (docs/formats/megatron.md §1.3; the reader is dcp_metadata.h):
//
//   .metadata            pickle (protocol 2) of Metadata: state_dict_metadata {fqn:
//                        TensorStorageMetadata{properties, size, chunks} | BytesStorageMetadata},
//                        planner_data None, storage_data {MetadataIndex{fqn, offset, index}:
//                        _StorageInfo{relative_path, offset, length, transform_descriptors}},
//                        storage_meta None, version "1.0.0". TensorProperties is BUILT from its
//                        5-tuple state (dtype, layout, requires_grad, _MEM_FORMAT_ENCODING,
//                        pin_memory), as its __getstate__ gives it.
//   <file>.distcp        its items one after another: first the byte items (raw bytes, e.g. a
//                        torch.save of a pickled object), then one torch.save archive per tensor
//                        chunk holding that chunk alone (global box `offsets` + shape), contiguous.
//
// Tensor bytes are never held: each chunk is a LogicalTensor whose fragments the executor
// streams into its archive's data record, and the archive's CRC-dependent trailer is written
// after it (FileFraming).
#pragma once

#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "plan/plan.h"

namespace ckptstream::dcp {

// One stored box of a global tensor: `data` (shape = the box's sizes, written in data.dtype).
struct ChunkToWrite {
  std::string fqn;
  Shape global_shape;
  Shape offsets;
  LogicalTensor data;
};

struct BytesToWrite {
  std::string fqn;
  std::string bytes;
};

struct FileToWrite {
  std::string name;  // relative to the checkpoint directory: "__0_0.distcp"
  std::vector<BytesToWrite> bytes;
  std::vector<ChunkToWrite> chunks;
};

struct DcpOutput {
  std::vector<OutputFile> files;  // in the order given
  std::string metadata;           // the bytes of .metadata
};

// Lays out the files and the metadata. `prefix` goes before every output file name (a
// subdirectory, "release/"). Errors: a chunk whose data shape is not its box, a box outside its
// global shape, one fqn given two global shapes or dtypes, or both as tensor and bytes, a byte
// item given twice.
Result<DcpOutput> plan_dcp_output(std::vector<FileToWrite> files, const std::string& prefix);

}  // namespace ckptstream::dcp
