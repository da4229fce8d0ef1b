#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <linux/magic.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "ckptstream/dtype.h"
#include "io/input_file.h"
#include "plan/plan.h"
#include "plan/views.h"

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
  // Just written and read: in the page cache. Past the end: not.
  CHECK(file->cached(0, 10));
  CHECK(!file->cached(10, 4));
  CHECK(!file->cached(0, 0));
  file->random_access();  // hints only: reads behave the same
  file->will_need(0, 10);
  REQUIRE(file->read_at(0, buf).ok());
  CHECK(static_cast<char>(buf[3]) == '3');
  std::filesystem::remove(path);
  CHECK(!InputFile::open(path).ok());
}

TEST_CASE("InputFile measures how much of it is cached; keep_cache leaves its pages there") {
  auto path = std::filesystem::temp_directory_path() / "ckpt_test_core_cache.bin";
  {
    std::ofstream out(path, std::ios::binary);
    std::string block(1 << 20, 'x');
    for (int i = 0; i < 4; ++i) out << block;
  }
  auto file = InputFile::open(path);
  REQUIRE(file.ok());
  std::vector<std::byte> all(file->size());
  REQUIRE(file->read_at(0, all).ok());
  CHECK(file->cached_fraction() > 0.9);
  ::fsync(file->fd());  // clean pages can be dropped
  file->keep_cache();
  auto kept = InputFile::open(path);  // a fresh object given the kept file: the choice moves too
  REQUIRE(kept.ok());
  *kept = std::move(*file);
  kept->drop_cache(0, kept->size());
  CHECK(kept->cached_fraction() > 0.9);
  // Where the file system drops clean pages at all (not tmpfs), a file not kept loses them.
  auto plain = InputFile::open(path);
  REQUIRE(plain.ok());
  plain->drop_cache(0, plain->size());
  struct statfs fs {};
  if (::statfs(path.c_str(), &fs) == 0 && fs.f_type != TMPFS_MAGIC)
    CHECK(plain->cached_fraction() < 0.1);
  std::filesystem::remove(path);
}

TEST_CASE("range_fits does not overflow") {
  CHECK(range_fits(0, 10, 10));
  CHECK(!range_fits(1, 10, 10));
  CHECK(!range_fits(5, UINT64_MAX, 10));
}

namespace {
// A [4, 6] tensor split in two fragments along dim 1 (columns 0-3 and 4-5), each a contiguous
// view in its own storage.
LogicalTensor two_column_fragments() {
  LogicalTensor t;
  t.name = std::string(1, 'w');  // a literal here trips GCC 12's false -Wrestrict
  t.shape = {4, 6};
  Fragment left{TensorRef{0, 0, 64, DType::kF32, {4, 4}, {4, 1}, 0, false}, {0, 0}};
  Fragment right{TensorRef{1, 0, 32, DType::kF32, {4, 2}, {2, 1}, 0, false}, {0, 4}};
  t.fragments = {left, right};
  return t;
}
}  // namespace

TEST_CASE("narrow clips fragments and moves their source offsets") {
  auto t = narrow(two_column_fragments(), 1, 3, 2);  // columns 3 and 4
  CHECK(t.shape == Shape{4, 2});
  REQUIRE(t.fragments.size() == 2);
  CHECK(t.fragments[0].source.shape == Shape{4, 1});
  CHECK(t.fragments[0].source.offset == 3);
  CHECK(t.fragments[0].offsets == Shape{0, 0});
  CHECK(t.fragments[1].source.shape == Shape{4, 1});
  CHECK(t.fragments[1].source.offset == 0);
  CHECK(t.fragments[1].offsets == Shape{0, 1});

  auto rows = narrow(two_column_fragments(), 0, 1, 2);
  CHECK(rows.shape == Shape{2, 6});
  CHECK(rows.fragments[0].source.offset == 4);
  CHECK(rows.fragments[1].source.offset == 2);

  CHECK(narrow(two_column_fragments(), 1, 0, 4).fragments.size() == 1);
}

TEST_CASE("select removes the dimension") {
  auto row = select(two_column_fragments(), 0, 2);
  CHECK(row.shape == Shape{6});
  REQUIRE(row.fragments.size() == 2);
  CHECK(row.fragments[0].source.shape == Shape{4});
  CHECK(row.fragments[0].source.strides == Shape{1});
  CHECK(row.fragments[0].source.offset == 8);
  CHECK(row.fragments[1].offsets == Shape{4});
  CHECK(row.fragments[1].source.offset == 4);
}
