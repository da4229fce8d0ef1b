// Comparison against a reference Hugging Face model, tensor by tensor: `verify OUT --reference
// REF [--atol A --rtol R]` (a written directory against another) and `test --test_hf_dir REF`
// (verl's test operation: a plan, never written, against a reference). The reference is a
// directory holding model.safetensors, or shards named by model.safetensors.index.json (or one
// .safetensors file); every file's header is read and tensors are matched by name across files.
//
// The candidate is a stream of windows (tensor name, byte offset in the tensor, bytes), in order
// within each tensor, as execute_plan would write them; the reference bytes of each window are
// read with pread in chunks of at most CompareOptions::buffer_bytes, so memory stays bounded by
// a few buffers whatever the model size. A directory candidate is read the same way.
//
// What is compared, as verl's test does (verl.md §2.6): the name sets (every missing and extra
// name listed), then for each common name the shape and dtype (a difference is a problem and its
// values are not compared), then the values:
//  - exact (atol = rtol = 0, the default): the bytes of each element; -0.0 differs from 0.0 and
//    NaNs must have the same bits;
//  - with a tolerance, F16/BF16/F32/F64 elements converted to float64 must satisfy
//    |a - b| <= atol + rtol * |b| (b the reference, as torch.isclose); NaN matches only NaN, an
//    infinity only the same infinity. Integer, bool and other dtypes (complex, float8, ...) are
//    always compared exactly.
// Each compared tensor gets its number of mismatching elements, the first one's index, and the
// largest absolute and relative differences (for float and integer dtypes; a NaN against a
// number, or an infinity against anything else, counts as an infinite difference). The worst
// tensor is the one with mismatches and the largest absolute difference (the first such tensor
// on ties), or, when every tensor matches, the one with the largest difference within tolerance.
//
// Errors are what prevents comparing at all (no such directory, an unreadable header, a stream
// that fails); differences are listed in CompareReport::problems, as in verify.h.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/ckptstream.h"
#include "ckptstream/result.h"
#include "exec/executor.h"
#include "plan/plan.h"

namespace ckptstream {

// CompareOptions, TensorComparison, CompareReport, compare_dirs and describe are declared in the
// public header (include/ckptstream/ckptstream.h).

// A tensor of the candidate, declared before its windows arrive.
struct CandidateTensor {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
};

// Receives the candidate's bytes: each tensor's windows in order (offset = bytes of the tensor
// before the window), windows of different tensors in any order. Windows need not hold whole
// elements.
using CandidateSink = std::function<Status(std::string_view tensor, std::uint64_t offset,
                                           std::span<const std::byte> bytes)>;
// Produces the whole candidate into the sink; returns the sink's first error, or its own.
using CandidateSource = std::function<Status(const CandidateSink& sink)>;

// The core: compares the candidate that `source` produces, declared by `tensors`, against the
// reference model at `reference`.
Result<CompareReport> compare_stream(const std::vector<CandidateTensor>& tensors,
                                     const CandidateSource& source,
                                     const std::filesystem::path& reference,
                                     const CompareOptions& options);

// A plan, streamed with stream_plan (nothing written), against a reference.
Result<CompareReport> compare_plan(const Plan& plan, const std::filesystem::path& reference,
                                   const CompareOptions& options, const ExecOptions& exec_options);

}  // namespace ckptstream
