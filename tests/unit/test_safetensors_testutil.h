// Helpers shared by the safetensors unit tests: temporary files and tensors.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "plan/plan.h"
#include "temp_dir.h"

namespace ckptstream::safetensors::testing {

using ckptstream::testing::TempDir;

inline std::string le64(std::uint64_t n) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i)
    bytes[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return bytes;
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline LogicalTensor tensor(std::string name, DType dtype, Shape shape) {
  LogicalTensor t;
  t.name = std::move(name);
  t.source_dtype = dtype;
  t.dtype = dtype;
  t.shape = std::move(shape);
  return t;
}

}  // namespace ckptstream::safetensors::testing
