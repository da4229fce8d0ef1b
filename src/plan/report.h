// What `ckptstream plan --dry-run` prints: a Plan described before a byte moves, as text for
// people or as JSON for tools. Both are built in one pass with appends, handed out one output
// file at a time (write_plan_*) or gathered into one string (plan_to_*), so a plan of 100k
// tensors and 1M fragments costs time linear in its size.
//
// Terms. A fragment reads a strided view of a storage in an input file: its *offset* is the
// absolute byte offset in that file of the lowest storage element the view touches (the view's
// first element for the non-negative strides torch writes), its *length* the bytes of the span
// [lowest, highest] element it touches (equal to its own bytes when contiguous; larger for
// transposed or strided views). *Bytes read* sums the bytes the fragments actually need (their
// elements x source element size), LoRA factors included; *bytes written* sums the output files
// (headers included), the index and the side files (their size on disk now; 0 if unreadable).
// Dtype names are safetensors' ("BF16"), or torch's ("complex64") for dtypes it cannot hold.
//
// Text (Detail::kFragments; kTensors drops the "<-" and LoRA lines, kFiles the tensor lines too):
//
//   file model.safetensors: 148 bytes (header 120), 2 tensors
//     a BF16 [4, 2] bytes [120, 136) from F32
//       <- in/r0.bin @64 +16 [2, 2] at [0, 0]
//       <- in/r1.bin @8 +24 [2, 2] strides [1, 4] at [2, 0] byteswap
//     b F32 [3] bytes [136, 148)
//       <- in/r0.bin @0 +12 [3] at [0]
//       lora scale 0.5 A F32 [1, 3] B F32 [3, 1]
//         A <- in/a.bin @0 +12 [1, 3] at [0, 0]
//         B <- in/b.bin @0 +12 [3, 1] at [0, 0]
//   side config.json <- src/config.json (25 bytes)
//   index model.safetensors.index.json (300 bytes)
//   total: 1 file, 2 tensors, 5 fragments; read 68 bytes (68 B); write 473 bytes (473 B);
//   memory window 16777216 bytes (16 MiB)
//
// (the total is one line.) A tensor line shows the dtype written, the shape, the absolute byte
// range in the file and, when the sources hold another dtype, "from <dtype>"; a fragment line
// the input, "@offset +length", the view's shape, its strides only when it is not contiguous,
// "at" its offsets in the tensor, and "byteswap" for big-endian sources. A region of zeros read
// from no file (TensorRef::zeros: Megatron's padded vocab rows) is "<- zeros [2, 2] at [4, 0]".
//
// JSON (schema "ckptstream.plan/1"; keys always in this order, optional ones marked "?"):
//
//   {"schema": "ckptstream.plan/1",
//    "inputs": ["in/r0.bin", ...],                        // fragments refer to these by index
//    "files": [{"name": "model.safetensors", "size": 148, "header_bytes": 120,
//               "tensors"?: [                                  // absent with Detail::kFiles
//                 {"name": "a", "dtype": "BF16", "source_dtype": "F32", "shape": [4, 2],
//                  "begin": 120, "end": 136,                   // absolute byte range in the file
//                  "fragments"?: [                             // only with Detail::kFragments
//                    {"input": 0, "offset": 64, "length": 16, "shape": [2, 2],
//                     "strides"?: [1, 4],                      // only when not contiguous
//                     "at": [0, 0], "byteswap"?: true},        // byteswap only when true
//                    {"zeros": true, "shape": [2, 2], "at": [4, 0]}],  // zeros: no input
//                  "lora"?: {"scale": 0.5,                     // only when a delta is fused
//                            "a": {"dtype": "F32", "source_dtype": "F32", "shape": [1, 3],
//                                  "fragments"?: [...]},
//                            "b": {...}}}]}],
//    "side_files": [{"name": "config.json", "source": "src/config.json", "size": 25}],
//    "index": {"name": "model.safetensors.index.json", "size": 300} | null,
//    "totals": {"files": 1, "tensors": 2, "fragments": 5, "bytes_read": 68,
//               "bytes_written": 473, "tensor_bytes": 28, "memory_window": 16777216}}
//
// Sizes and offsets are integers in bytes; "fragments" in totals counts LoRA factors' fragments
// too; "scale" is a JSON number (null if not finite). Strings are escaped as serde_json does;
// a path that is not valid UTF-8 has each byte outside printable ASCII written as \u00XX. The
// JSON puts each file and each tensor on a line of its own (not indented) so that it greps well.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "plan/plan.h"

namespace ckptstream {

struct PlanSummaryOptions {
  enum class Detail { kFiles, kTensors, kFragments };
  Detail detail = Detail::kFragments;
  std::uint64_t memory_window = 0;  // the executor's staging buffer (ExecOptions::buffer_bytes)
  // JSON only: what was found and decided, after "totals" as "layout" and "notes" (left out
  // when empty). A Megatron source's notes give the mapping's coverage (mapped, skipped by rule).
  std::string layout;
  std::vector<std::string> notes;
};

// Totals of a plan, as the reports print them.
struct PlanTotals {
  std::uint64_t files = 0;
  std::uint64_t tensors = 0;
  std::uint64_t fragments = 0;
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_written = 0;
  std::uint64_t tensor_bytes = 0;
};
PlanTotals plan_totals(const Plan& plan);

std::string plan_to_text(const Plan& plan, const PlanSummaryOptions& options);
std::string plan_to_json(const Plan& plan, const PlanSummaryOptions& options);

// The same reports handed to `sink` one output file at a time, so that printing the plan of a
// terabyte model (a million fragment lines) does not hold the whole text in memory.
using ReportSink = std::function<void(std::string_view part)>;
void write_plan_text(const Plan& plan, const PlanSummaryOptions& options, const ReportSink& sink);
void write_plan_json(const Plan& plan, const PlanSummaryOptions& options, const ReportSink& sink);

// "1.5 GiB", "512 B": bytes with a binary unit, for people.
std::string human_bytes(std::uint64_t bytes);

}  // namespace ckptstream
