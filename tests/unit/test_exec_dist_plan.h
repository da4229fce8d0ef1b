// A plan of many small output files for the executor's threads and distributed tests: one
// input file of random bytes, tensors of several sizes (contiguous, transposed, cast to bf16),
// a side file, a generated text file and an index. Helpers to compare output directories.
#pragma once

#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "plan/plan.h"
#include "temp_dir.h"

namespace dist_test {

namespace fs = std::filesystem;
using namespace ckptstream;
using ckptstream::testing::TempDir;
using ckptstream::testing::write_file;

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Every regular file under `dir` (relative names, sorted), directories included as "name/".
inline std::vector<std::string> tree(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    std::string name = fs::relative(entry.path(), dir).string();
    names.push_back(entry.is_directory() ? name + "/" : name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Checks that two output directories hold the same files with the same bytes.
inline void check_same_tree(const fs::path& a, const fs::path& b) {
  auto names = tree(a);
  REQUIRE(names == tree(b));
  for (const auto& name : names) {
    if (name.back() == '/') continue;
    CAPTURE(name);
    CHECK(read_text(a / name) == read_text(b / name));
  }
}

// `files` output files; file f holds f % 3 + 1 tensors of different sizes, from one input of
// random bytes under `dir`.
inline Plan many_files_plan(const fs::path& dir, std::size_t files) {
  constexpr std::int64_t kFloats = 1 << 16;
  std::mt19937 random(1234);
  std::string bytes(static_cast<std::size_t>(kFloats) * 4, '\0');
  for (auto& c : bytes) c = static_cast<char>(random() & 0x7f);  // finite floats
  write_file(dir / "input.bin", bytes);
  write_file(dir / "config.json", "{\"model_type\": \"test\"}\n");
  Plan plan;
  plan.inputs = {dir / "input.bin"};
  std::int64_t next = 0;
  for (std::size_t f = 0; f < files; ++f) {
    OutputFile file;
    file.name = "model-" + std::to_string(f + 1) + "-of-" + std::to_string(files) + ".safetensors";
    file.header = "HEADER" + std::to_string(f) + "!";
    std::uint64_t position = 0;
    for (std::size_t t = 0; t <= f % 3; ++t) {
      std::int64_t rows = 4 + static_cast<std::int64_t>((f * 7 + t * 5) % 29);
      std::int64_t cols = 8 + static_cast<std::int64_t>((f * 3 + t) % 17);
      if (next + rows * cols > kFloats) next = 0;
      LogicalTensor tensor;
      tensor.name = "layer." + std::to_string(f) + ".w" + std::to_string(t);
      tensor.source_dtype = DType::kF32;
      tensor.dtype = t == 1 ? DType::kBF16 : DType::kF32;
      bool transposed = t == 2;
      tensor.shape = transposed ? Shape{cols, rows} : Shape{rows, cols};
      TensorRef ref;
      ref.input = 0;
      ref.storage_begin = static_cast<std::uint64_t>(next) * 4;
      ref.storage_nbytes = static_cast<std::uint64_t>(rows * cols) * 4;
      ref.dtype = DType::kF32;
      ref.shape = tensor.shape;
      ref.strides = transposed ? Shape{1, cols} : Shape{cols, 1};
      tensor.fragments.push_back({ref, {0, 0}});
      next += rows * cols;
      PlacedTensor placed{tensor, position, position + nbytes(tensor)};
      position = placed.data_end;
      file.tensors.push_back(std::move(placed));
    }
    plan.total_size += position;
    plan.files.push_back(std::move(file));
  }
  plan.index_json = "{\"metadata\": {}, \"weight_map\": {}}\n";
  plan.side_files.push_back({dir / "config.json", "config.json"});
  plan.text_files.push_back({"notes/generated.txt", "made by the plan\n"});
  return plan;
}

}  // namespace dist_test
