// Builders for the hand-made plans of the executor tests: the raw bytes of typed values (to
// write as an input file or to compare with an output), a logical tensor from its fragments, and
// an output file that places its tensors back to back after an 8-byte stand-in header
// ("HEADER!!"), so that a test need not make a real safetensors header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "plan/plan.h"

namespace ckptstream::testing {

template <class T>
std::vector<std::byte> bytes_of(const std::vector<T>& values) {
  std::vector<std::byte> bytes(values.size() * sizeof(T));
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

inline LogicalTensor tensor(const std::string& name, Shape shape, std::vector<Fragment> fragments,
                            DType source = DType::kF32, DType out = DType::kF32) {
  LogicalTensor t;
  t.name = name;
  t.source_dtype = source;
  t.dtype = out;
  t.shape = std::move(shape);
  t.fragments = std::move(fragments);
  return t;
}

inline OutputFile output_file(const std::string& name, std::vector<LogicalTensor> tensors) {
  OutputFile file;
  file.name = name;
  file.header = "HEADER!!";
  std::uint64_t position = 0;
  for (auto& t : tensors) {
    PlacedTensor placed{std::move(t), position, 0};
    placed.data_end = position + nbytes(placed.tensor);
    position = placed.data_end;
    file.tensors.push_back(std::move(placed));
  }
  return file;
}

}  // namespace ckptstream::testing
