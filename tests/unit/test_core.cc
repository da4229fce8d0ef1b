#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "ckptstream/dtype.h"
#include "io/input_file.h"
#include "plan/plan.h"

using namespace ckptstream;

TEST_CASE("dtype names round-trip between torch, storage classes and safetensors") {
  CHECK(dtype_from_torch_name("bfloat16") == DType::kBF16);
  CHECK(dtype_from_storage_class("HalfStorage") == DType::kF16);
  CHECK(dtype_from_safetensors_name("F8_E4M3") == DType::kF8E4M3FN);
  CHECK(!dtype_from_torch_name("float").has_value());  // aliases are never written by torch
  CHECK(element_size(DType::kComplex128) == 16);
  CHECK(dtype_info(DType::kF64).safetensors_rank > dtype_info(DType::kF32).safetensors_rank);
  for (int i = 0; i <= static_cast<int>(DType::kBits4x2); ++i)
    CHECK(dtype_info(static_cast<DType>(i)).dtype == static_cast<DType>(i));
}

TEST_CASE("InputFile reads exactly and names the file when truncated") {
  auto path = std::filesystem::temp_directory_path() / "ckpt_test_core_input.bin";
  { std::ofstream(path, std::ios::binary) << "0123456789"; }
  auto file = InputFile::open(path);
  REQUIRE(file.ok());
  CHECK(file->size() == 10);
  std::byte buf[4];
  REQUIRE(file->read_at(6, buf).ok());
  CHECK(static_cast<char>(buf[0]) == '6');
  auto bad = file->read_at(8, buf);
  REQUIRE(!bad.ok());
  CHECK(bad.error().message.find("ckpt_test_core_input.bin: truncated") != std::string::npos);
  auto map = file->mapped();
  REQUIRE(map.ok());
  CHECK(static_cast<char>((*map)[9]) == '9');
  std::filesystem::remove(path);
  CHECK(!InputFile::open(path).ok());
}

TEST_CASE("range_fits does not overflow") {
  CHECK(range_fits(0, 10, 10));
  CHECK(!range_fits(1, 10, 10));
  CHECK(!range_fits(5, UINT64_MAX, 10));
}
