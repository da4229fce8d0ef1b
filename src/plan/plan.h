// The plan: everything known before a byte moves. Format readers describe where each source
// tensor's bytes live (TensorRef) and how they tile a logical tensor (Fragment); the planner
// assigns logical tensors to output safetensors files and byte offsets; the executor runs it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/dtype.h"

namespace ckptstream {

using Shape = std::vector<std::int64_t>;

// Block-quantized weights (DeepSeek's and Kimi's FP8 checkpoints): a [rows, cols] weight stored
// in 8-bit floats, with one float32 scale per block of block_rows x block_cols (edge blocks
// partial) in a [grid_rows, grid_cols] tensor of its own. A view of such a weight produces
// float32 values float32(w) * scale[r / block_rows][c / block_cols], where (r, c) is the
// element's place in the weight (its storage index s: r = s / weight_cols, c = s % weight_cols),
// as torch computes `w.to(float32) * scale_expanded`; any view of the weight keeps that place.
struct BlockScaleRef {
  std::size_t input = 0;            // the scales' file (Plan::inputs)
  std::uint64_t storage_begin = 0;  // byte offset of scale [0][0], row-major float32
  std::int64_t grid_rows = 0;
  std::int64_t grid_cols = 0;
  std::int64_t weight_cols = 0;
  std::int64_t block_rows = 128;
  std::int64_t block_cols = 128;
};

// A strided view of a tensor whose storage lies in an input file. Shape, strides and offset are
// in elements of `dtype`, exactly as torch records them (the storage may be larger than the view).
struct TensorRef {
  std::size_t input = 0;             // index into Plan::inputs
  std::uint64_t storage_begin = 0;   // absolute byte offset of storage element 0 in the file
  std::uint64_t storage_nbytes = 0;  // bytes of the storage, for bounds checks
  DType dtype = DType::kF32;
  Shape shape;
  Shape strides;
  std::int64_t offset = 0;  // storage offset, in elements
  bool byteswap = false;    // stored in big-endian order
  // The CRC-32 the zip archive records for the storage's record, checked as its bytes are read
  // (exec/record_check.h); false for storages that have none (the legacy format, records written
  // with torch's compute_crc32=False, empty records).
  bool has_crc32 = false;
  std::uint32_t crc32 = 0;
  // No bytes in any file: every element of the view is zero (Megatron's padded vocab rows,
  // plan/views.h zeros()). `input`, the storage and `offset` are unused; the executor writes
  // zeros and reads nothing.
  bool zeros = false;
  // Stored block-quantized: the view produces float32 values (BlockScaleRef); `dtype` stays the
  // stored one (float8_e4m3fn), the logical tensor's source dtype is float32.
  std::shared_ptr<const BlockScaleRef> block_scale = nullptr;
};

// "This box of a source tensor lands at these offsets of a logical tensor": the source view's
// shape is the box; `offsets` has one entry per dimension of the logical tensor.
struct Fragment {
  TensorRef source;
  Shape offsets;
};

struct LoraDelta;

// A tensor of the output: its name, global shape, the dtype it is written in, and the
// fragments that tile it exactly (no holes, no overlaps; checked by the planner).
struct LogicalTensor {
  std::string name;
  DType source_dtype = DType::kF32;  // dtype of every fragment
  DType dtype = DType::kF32;         // dtype written
  Shape shape;
  std::vector<Fragment> fragments;
  std::shared_ptr<const LoraDelta> lora;  // a low-rank update fused while streaming, if any
  // Tensors with the same non-empty group are views of one parameter in the model transformers
  // saves (a packed MoE projection cut into experts): huggingface_hub's split counts that storage
  // once, at its first member, and keeps every member in that member's file.
  std::string shard_group;
};

// W + scale * (B @ A) for a 2-d weight W [out, in], with A [r, in] and B [out, r]: computed in
// float32 from the fragments' values, then written in the tensor's dtype (PEFT's merge).
struct LoraDelta {
  LogicalTensor a;
  LogicalTensor b;
  double scale = 1.0;
};

std::int64_t numel(const Shape& shape);
// "[4, 2]": a shape (or strides) in messages.
std::string shape_text(const Shape& shape);
// Row-major contiguous (size-1 dimensions may have any stride), as torch's is_contiguous().
bool is_contiguous(const Shape& shape, const Shape& strides);
// The row-major strides of a contiguous tensor of `shape`.
Shape contiguous_strides(const Shape& shape);
std::uint64_t nbytes(const LogicalTensor& tensor);  // in the written dtype
// The shape a safetensors header gives a tensor of this dtype and (torch) shape: the same,
// except F4, whose header counts fp4 values (two per byte of torch.float4_e2m1fn_x2).
Shape header_shape(DType dtype, const Shape& shape);
inline Shape header_shape(const LogicalTensor& tensor) {
  return header_shape(tensor.dtype, tensor.shape);
}

// A tensor placed in an output file: [data_begin, data_end) relative to the byte buffer that
// follows the header (safetensors data_offsets).
struct PlacedTensor {
  LogicalTensor tensor;
  std::uint64_t data_begin = 0;
  std::uint64_t data_end = 0;
};

// What the executor knows of a tensor once it has written it: what a format that frames its
// tensors (FileFraming) needs to write the bytes after it.
struct WrittenTensor {
  std::uint32_t crc32 = 0;             // of the bytes written
  std::array<std::byte, 8> head = {};  // their first bytes (fewer for smaller tensors)
  std::uint64_t size = 0;
};

// The bytes a file format puts between and after its tensors when they depend on the tensors'
// bytes: a torch zip (torch/torch_writer.h) ends each record with a data descriptor holding its
// CRC-32 and the file with a central directory listing them. Safetensors has none (no framing).
class FileFraming {
 public:
  virtual ~FileFraming() = default;
  // The bytes from the end of tensor `index`'s data (file order) to the next tensor's data, or
  // for the last tensor to the end of the file; `written` holds tensors 0..index.
  virtual std::string after_tensor(std::size_t index,
                                   std::span<const WrittenTensor> written) const = 0;
};

// One output file: its header (for safetensors the 8-byte length + padded JSON; for a torch zip
// every byte before the first tensor's data), and its tensors in file order.
struct OutputFile {
  std::string name;                   // "model.safetensors", "model-00001-of-00003.safetensors"
  std::string header;                 // bytes [0, header.size()) of the file
  std::vector<PlacedTensor> tensors;  // sorted by data_begin
  std::shared_ptr<const FileFraming> framing;  // null: zeros between tensors, nothing after
  std::uint64_t tail_bytes = 0;                // after the last tensor (framing's)
  std::uint64_t size() const;                  // header + data + tail
};

// A file copied byte for byte next to the output (config.json, tokenizer files, ...).
struct SideFile {
  std::filesystem::path source;
  std::string name;  // relative name in the output directory
};

// A relative path that stays below its directory: not absolute, no empty, "." or ".." component,
// nothing under a staging directory. Output names, and names read from an index or a manifest.
bool is_safe_relative_name(const std::string& name);

// The name Hugging Face gives the index of a sharded safetensors model.
inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";

// A small file whose bytes the planner made (adapter_config.json of a LoRA adapter, ...).
struct TextFile {
  std::string name;
  std::string contents;
};

struct Plan {
  std::vector<std::filesystem::path> inputs;  // TensorRef::input indexes this
  std::vector<OutputFile> files;
  std::vector<TextFile> text_files;
  std::string index_json;  // kIndexFileName's bytes; empty for one file
  std::vector<SideFile> side_files;
  std::uint64_t total_size = 0;  // tensor bytes over all files
};

}  // namespace ckptstream
