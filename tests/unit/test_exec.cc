// The streaming executor on hand-made plans: exact output bytes against a naive per-element
// reference, errors, staging cleanup, side files, index and manifest.
#include <doctest/doctest.h>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "exec/dtype_convert.h"
#include "exec/executor.h"
#include "exec/manifest.h"
#include "plan/views.h"
#include "plan_builders.h"
#include "temp_dir.h"

using namespace ckptstream;
namespace fs = std::filesystem;
using namespace ckptstream::testing;
using Bytes = std::vector<std::byte>;

namespace {

// The plan's inputs go in in/ and its target is out/, so that listing(out()) sees outputs only.
struct InOutDir : TempDir {
  InOutDir() : TempDir("exec") {
    sub("in");
    sub("out");
  }
  fs::path in(const std::string& name) const { return path / "in" / name; }
  fs::path out() const { return path / "out"; }
};

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

TensorRef view(std::size_t input, std::uint64_t begin, std::uint64_t nbytes, DType dtype,
               Shape shape, Shape strides, std::int64_t offset = 0) {
  TensorRef ref;
  ref.input = input;
  ref.storage_begin = begin;
  ref.storage_nbytes = nbytes;
  ref.dtype = dtype;
  ref.shape = std::move(shape);
  ref.strides = std::move(strides);
  ref.offset = offset;
  return ref;
}

// The naive reference: element by element, find the fragment, read, swap, convert.
Bytes reference_bytes(const LogicalTensor& tensor, const std::vector<Bytes>& inputs) {
  std::int64_t n = numel(tensor.shape);
  std::size_t in_size = element_size(tensor.source_dtype), out_size = element_size(tensor.dtype);
  Bytes out(static_cast<std::size_t>(n) * out_size);
  Shape strides = contiguous_strides(tensor.shape);
  for (std::int64_t flat = 0; flat < n; ++flat) {
    int found = 0;
    for (const Fragment& f : tensor.fragments) {
      std::int64_t src = f.source.offset;
      bool inside = true;
      for (std::size_t d = 0; d < tensor.shape.size(); ++d) {
        std::int64_t i = flat / strides[d] % tensor.shape[d] - f.offsets[d];
        inside = inside && i >= 0 && i < f.source.shape[d];
        src += i * f.source.strides[d];
      }
      if (!inside) continue;
      ++found;
      if (f.source.zeros) {
        std::memset(&out[static_cast<std::size_t>(flat) * out_size], 0, out_size);
        continue;
      }
      std::byte element[16];
      std::memcpy(element, &inputs[f.source.input][f.source.storage_begin + src * in_size],
                  in_size);
      if (f.source.byteswap) std::reverse(element, element + in_size);
      convert_elements_at(tensor.source_dtype, tensor.dtype, element,
                          &out[static_cast<std::size_t>(flat) * out_size], 1,
                          static_cast<std::size_t>(flat), static_cast<std::size_t>(n));
    }
    REQUIRE(found == 1);
  }
  return out;
}

std::string xxh3_128_hex(const Bytes& bytes) {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits(bytes.data(), bytes.size()));
  std::string hex;
  for (unsigned char b : canonical.digest) {
    static const char* digits = "0123456789abcdef";
    hex += digits[b >> 4];
    hex += digits[b & 15];
  }
  return hex;
}

// Runs the plan and checks every output byte and hash against the reference.
void run_and_check(const Plan& plan, const fs::path& target, std::uint64_t buffer_bytes,
                   bool direct_writes = true) {
  std::vector<Bytes> inputs;
  for (const auto& path : plan.inputs) inputs.push_back(file_bytes(path));
  ExecOptions options;
  options.buffer_bytes = buffer_bytes;
  options.direct_writes = direct_writes;
  options.writeback_bytes = 256;  // exercise the writeback windows on tiny files too
  auto manifest = execute_plan(plan, target, options);
  REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);
  REQUIRE(manifest->files.size() == plan.files.size());
  for (std::size_t f = 0; f < plan.files.size(); ++f) {
    const OutputFile& file = plan.files[f];
    Bytes written = file_bytes(target / file.name);
    REQUIRE(written.size() == file.size());
    CHECK(std::memcmp(written.data(), file.header.data(), file.header.size()) == 0);
    CHECK(manifest->files[f].size == file.size());
    for (std::size_t t = 0; t < file.tensors.size(); ++t) {
      const PlacedTensor& placed = file.tensors[t];
      CAPTURE(placed.tensor.name);
      Bytes want = reference_bytes(placed.tensor, inputs);
      auto begin =
          written.begin() + static_cast<std::ptrdiff_t>(file.header.size() + placed.data_begin);
      Bytes got(begin, begin + static_cast<std::ptrdiff_t>(want.size()));
      CHECK(got == want);
      CHECK(manifest->files[f].tensors[t].name == placed.tensor.name);
      CHECK(manifest->files[f].tensors[t].xxh3_128 == xxh3_128_hex(got));
    }
  }
  for (const auto& name : listing(target)) CHECK(name.rfind(".ckptstream-staging", 0) != 0);
}

// A float tensor of `n` values 1, 2, ... stored at byte `begin` of a file of noise.
Bytes numbered_storage(std::size_t n, std::size_t begin, std::size_t after = 3) {
  std::vector<float> values(n);
  std::iota(values.begin(), values.end(), 1.0f);
  Bytes bytes(begin, std::byte{0xAB});
  Bytes data = bytes_of(values);
  bytes.insert(bytes.end(), data.begin(), data.end());
  bytes.insert(bytes.end(), after, std::byte{0xCD});
  return bytes;
}

Plan single_file_plan(const fs::path& input, std::vector<LogicalTensor> tensors) {
  Plan plan;
  plan.inputs = {input};
  plan.files.push_back(output_file("model.safetensors", std::move(tensors)));
  return plan;
}

}  // namespace

TEST_CASE("contiguous, transposed, offset and strided views are copied exactly") {
  InOutDir dir;
  write_file(dir.in("a.bin"), numbered_storage(60, 13));
  std::uint64_t storage = 60 * 4;
  auto whole = view(0, 13, storage, DType::kF32, {5, 7}, {7, 1});
  auto transposed = view(0, 13, storage, DType::kF32, {7, 5}, {1, 7});  // storage is [5, 7]
  auto sliced = view(0, 13, storage, DType::kF32, {4, 3}, {14, 2}, 3);  // every 2nd row and column
  auto scalar = view(0, 13, storage, DType::kF32, {}, {}, 59);
  auto empty = view(0, 13, storage, DType::kF32, {0, 3}, {3, 1});
  Plan plan =
      single_file_plan(dir.in("a.bin"), {tensor("whole", {5, 7}, {{whole, {0, 0}}}),
                                         tensor("transposed", {7, 5}, {{transposed, {0, 0}}}),
                                         tensor("sliced", {4, 3}, {{sliced, {0, 0}}}),
                                         tensor("scalar", {}, {{scalar, {}}}),
                                         tensor("empty", {0, 3}, {{empty, {0, 0}}})});
  for (std::uint64_t buffer : {16ull << 20, 64ull, 36ull}) {
    CAPTURE(buffer);
    run_and_check(plan, dir.out(), buffer);
  }
  // Spot-check the reference itself: transposed[1][0] is storage element 1 (value 2).
  Bytes out = file_bytes(dir.out() / "model.safetensors");
  float value;
  std::memcpy(&value, &out[8 + 35 * 4 + 5 * 4], 4);
  CHECK(value == 2.0f);
  CHECK(listing(dir.out()) ==
        std::vector<std::string>{"ckptstream.manifest.json", "model.safetensors"});
}

TEST_CASE("fragments tiling dim 0, dim 1 and a 3-d tensor, uneven and empty") {
  InOutDir dir;
  write_file(dir.in("a.bin"), numbered_storage(200, 5));
  auto at = [](std::uint64_t element, Shape shape) {
    return view(0, 5 + element * 4, numel(shape) * 4, DType::kF32, shape,
                contiguous_strides(shape));
  };
  // [5, 4] as rows 0-1 and 2-4 (Shard(0), uneven), plus an empty shard.
  auto rows = tensor("rows", {5, 4},
                     {{at(0, {2, 4}), {0, 0}}, {at(8, {3, 4}), {2, 0}}, {at(0, {0, 4}), {5, 0}}});
  // [3, 7] as columns 0-2 and 3-6 (Shard(1): one run per row).
  auto cols = tensor("cols", {3, 7}, {{at(40, {3, 3}), {0, 0}}, {at(60, {3, 4}), {0, 3}}});
  // [3, 4, 5] split on dim 1 (1 + 3) and then dim 2 (2 + 3) of the second part.
  auto cube = tensor("cube", {3, 4, 5},
                     {{at(100, {3, 1, 5}), {0, 0, 0}},
                      {at(120, {3, 3, 2}), {0, 1, 0}},
                      {at(140, {3, 3, 3}), {0, 1, 2}},
                      {at(0, {3, 0, 5}), {0, 4, 0}}});
  Plan plan = single_file_plan(dir.in("a.bin"), {rows, cols, cube});
  for (std::uint64_t buffer : {16ull << 20, 64ull, 28ull, 4ull}) {
    CAPTURE(buffer);
    run_and_check(plan, dir.out(), buffer);
  }
}

// The planner's view operations (plan/views.h) compose into plans the executor runs exactly:
// each result is checked element by element against the tensor it was made from.
TEST_CASE("planner views: unflatten, flatten, narrow, concat and zeros run to the right bytes") {
  InOutDir dir;
  write_file(dir.in("a.bin"), numbered_storage(48, 7));
  auto at = [](std::uint64_t element, Shape shape, Shape strides) {
    return view(0, 7 + element * 4, (48 - element) * 4, DType::kF32, shape, strides);
  };
  // [6, 4] as two shards of 3 rows (stored apart, in reverse order).
  auto rows =
      tensor("rows", {6, 4}, {{at(12, {3, 4}, {4, 1}), {0, 0}}, {at(0, {3, 4}, {4, 1}), {3, 0}}});
  // [4, 6], the transpose of storage elements 24..47 as [6, 4]: strides that do not merge.
  auto transposed = tensor("transposed", {4, 6}, {{at(24, {4, 6}, {1, 4}), {0, 0}}});
  const std::vector<Bytes> inputs = {file_bytes(dir.in("a.bin"))};
  auto same_values = [&](const LogicalTensor& a, const LogicalTensor& b) {
    return reference_bytes(a, inputs) == reference_bytes(b, inputs);
  };

  const std::int64_t groups[] = {3, 2};
  auto unflat = unflatten(rows, 0, groups);  // groups of 2 rows: the shards cut group 1
  REQUIRE_MESSAGE(unflat.ok(), unflat.error().message);
  CHECK(unflat->shape == Shape{3, 2, 4});
  CHECK(unflat->fragments.size() == 4);  // rows 0-1, row 2 | row 3, rows 4-5
  CHECK(same_values(*unflat, rows));
  auto back = flatten(*unflat, 0, 1);
  REQUIRE(back.ok());
  CHECK(back->shape == rows.shape);
  CHECK(same_values(*back, rows));

  auto flat = flatten(transposed, 0, 1);
  REQUIRE(flat.ok());
  CHECK(flat->shape == Shape{24});
  CHECK(flat->fragments.size() == 4);  // one per row: a row's stride (4) is not 6 x the next's
  CHECK(same_values(*flat, transposed));
  const std::int64_t split[] = {2, 3, 4};
  auto three = unflatten(*flat, 0, split);
  REQUIRE(three.ok());
  CHECK(three->shape == Shape{2, 3, 4});
  auto two = flatten(*three, 1, 2);
  REQUIRE(two.ok());
  CHECK(two->shape == Shape{2, 12});
  CHECK(same_values(*two, *flat));

  // Megatron's QKV grouping in miniature: per group of 3 rows take row 1 (a "k" row).
  auto grouped = unflatten(rows, 0, groups);
  auto k_rows = narrow(select(*grouped, 1, 1), 0, 0, 3);
  CHECK(k_rows.shape == Shape{3, 4});
  std::vector<float> want;
  for (int g = 0; g < 3; ++g) {  // logical row r is storage row r + 3 (r < 3) or r - 3
    int row = g * 2 + 1, stored = row < 3 ? row + 3 : row - 3;
    for (int c = 0; c < 4; ++c) want.push_back(static_cast<float>(stored * 4 + c + 1));
  }
  CHECK(reference_bytes(k_rows, inputs) == bytes_of(want));

  // A padded vocabulary: the rows, then two rows of zeros.
  const LogicalTensor padded_parts[] = {rows, zeros("pad", DType::kF32, {2, 4})};
  auto padded = concat(padded_parts, 0, "padded");
  REQUIRE(padded.ok());
  CHECK(padded->shape == Shape{8, 4});
  Bytes padded_want = reference_bytes(rows, inputs);
  padded_want.resize(padded_want.size() + 8 * 4, std::byte{0});
  CHECK(reference_bytes(*padded, inputs) == padded_want);

  const LogicalTensor wrong[] = {rows, transposed};
  auto mismatch = concat(wrong, 0, "bad");
  REQUIRE(!mismatch.ok());
  CHECK(mismatch.error().message.find("along dim 0") != std::string::npos);
  const std::int64_t five[] = {5, 1};
  CHECK(!unflatten(rows, 0, five).ok());
  CHECK(!flatten(rows, 1, 0).ok());

  LogicalTensor bf16_pad = *padded;
  bf16_pad.name = "padded_bf16";
  bf16_pad.dtype = DType::kBF16;
  Plan plan = single_file_plan(dir.in("a.bin"), {*unflat, *flat, *two, k_rows, *padded, bf16_pad});
  for (std::uint64_t buffer : {16ull << 20, 64ull, 12ull}) {
    CAPTURE(buffer);
    run_and_check(plan, dir.out(), buffer);
  }
}

TEST_CASE("dtype conversion and byte swapping in the executor") {
  InOutDir dir;
  std::vector<float> values = {
      1.0f,   -2.5f, 3.14159f,       65520.0f,
      1e-40f, -0.0f, std::nanf("1"), std::numeric_limits<float>::infinity()};
  std::vector<std::uint32_t> swapped(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    swapped[i] = __builtin_bswap32(bits);
  }
  Bytes file = bytes_of(values);
  Bytes big = bytes_of(swapped);
  file.insert(file.end(), big.begin(), big.end());
  write_file(dir.in("a.bin"), file);
  auto little = view(0, 0, 32, DType::kF32, {8}, {1});
  auto big_endian = view(0, 32, 32, DType::kF32, {8}, {1});
  big_endian.byteswap = true;
  auto transposed_big = view(0, 32, 32, DType::kF32, {4, 2}, {1, 4});
  transposed_big.byteswap = true;
  Plan plan = single_file_plan(
      dir.in("a.bin"),
      {tensor("bf16", {8}, {{little, {0}}}, DType::kF32, DType::kBF16),
       tensor("f16", {2, 4}, {{view(0, 0, 32, DType::kF32, {2, 4}, {4, 1}), {0, 0}}}, DType::kF32,
              DType::kF16),
       tensor("f64", {8}, {{little, {0}}}, DType::kF32, DType::kF64),
       tensor("swapped", {8}, {{big_endian, {0}}}),
       tensor("swapped_bf16", {4, 2}, {{transposed_big, {0, 0}}}, DType::kF32, DType::kBF16)});
  for (std::uint64_t buffer : {16ull << 20, 20ull}) run_and_check(plan, dir.out(), buffer);
  Bytes out = file_bytes(dir.out() / "model.safetensors");
  std::uint16_t first[8];
  std::memcpy(first, &out[8], 16);
  CHECK(first[0] == 0x3F80);  // 1.0
  CHECK(first[6] == 0xFFFF);  // NaN, as torch writes it
  float swapped_value;
  std::memcpy(&swapped_value, &out[8 + 16 + 16 + 64 + 4], 4);
  CHECK(swapped_value == -2.5f);
}

TEST_CASE("randomised layouts match the per-element reference") {
  InOutDir dir;
  std::mt19937 rng(1234);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const std::pair<DType, DType> pairs[] = {{DType::kF32, DType::kF32},  {DType::kF32, DType::kBF16},
                                           {DType::kBF16, DType::kF32}, {DType::kF16, DType::kF64},
                                           {DType::kF64, DType::kBF16}, {DType::kI64, DType::kI64},
                                           {DType::kU8, DType::kU8}};
  for (int round = 0; round < 60; ++round) {
    CAPTURE(round);
    Bytes input(static_cast<std::size_t>(pick(0, 9)), std::byte{0x5A});
    auto [source_dtype, out_dtype] = pairs[pick(0, 6)];
    std::size_t es = element_size(source_dtype);
    std::vector<LogicalTensor> tensors;
    for (int t = 0; t < 3; ++t) {
      Shape shape(static_cast<std::size_t>(pick(0, 3)));
      for (auto& d : shape) d = pick(0, 7) == 0 ? 0 : pick(1, 6);
      // Cut one dim (if any) into up to three fragments, possibly empty.
      int cut_dim = shape.empty() ? -1 : pick(0, static_cast<int>(shape.size()) - 1);
      std::vector<std::pair<std::int64_t, std::int64_t>> pieces{
          {0, cut_dim < 0 ? 1 : shape[cut_dim]}};
      if (cut_dim >= 0 && pick(0, 1)) {
        std::int64_t a = pick(0, static_cast<int>(shape[cut_dim])),
                     b = pick(0, static_cast<int>(shape[cut_dim]));
        if (a > b) std::swap(a, b);
        pieces = {{0, a}, {a, b - a}, {b, shape[cut_dim] - b}};
      }
      LogicalTensor logical = tensor("t" + std::to_string(t), shape, {}, source_dtype, out_dtype);
      for (auto [begin, size] : pieces) {
        Shape box = shape, offsets(shape.size(), 0);
        if (cut_dim >= 0) box[cut_dim] = size, offsets[cut_dim] = begin;
        // Storage: the box's dims in a random order, each possibly padded or stepped by 2.
        std::vector<std::size_t> order(box.size());
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        Shape strides(box.size());
        std::int64_t stride = pick(1, 2);
        for (std::size_t k = order.size(); k-- > 0;) {
          strides[order[k]] = stride;
          stride *= std::max<std::int64_t>(box[order[k]], 1) + pick(0, 1);
        }
        std::int64_t offset = pick(0, 3);
        std::int64_t storage_elements = stride + offset + pick(0, 2);
        std::size_t begin_byte = input.size();
        for (std::int64_t i = 0; i < storage_elements * static_cast<std::int64_t>(es); ++i)
          input.push_back(static_cast<std::byte>(pick(0, 255)));
        auto ref = view(0, begin_byte, storage_elements * es, source_dtype, box, strides, offset);
        ref.byteswap = pick(0, 3) == 0;
        logical.fragments.push_back({ref, offsets});
      }
      std::shuffle(logical.fragments.begin(), logical.fragments.end(), rng);
      tensors.push_back(logical);
    }
    write_file(dir.in("r.bin"), input);
    Plan plan = single_file_plan(dir.in("r.bin"), tensors);
    const std::uint64_t buffers[] = {16, 24, 40, 64, 100, 1 << 20};
    run_and_check(plan, dir.out(), buffers[pick(0, 5)]);
  }
}

TEST_CASE("large files: direct and buffered writes, windows across write buffers, gaps") {
  // Write buffers of budget / 4 bytes: 16 KiB and 40000 give whole 4 KiB blocks (O_DIRECT where
  // the file system takes it; 40000 -> 8 KiB), 100 and 1000 tiny ones (buffered, thousands of
  // windows); 16 MiB one buffer for the whole file. Every combination writes the same bytes.
  InOutDir dir;
  const std::size_t n = 150001;  // odd: windows end in the middle of the buffers' blocks
  write_file(dir.in("a.bin"), numbered_storage(n, 7));
  std::uint64_t storage = n * 4;
  auto flat = view(0, 7, storage, DType::kF32, {static_cast<std::int64_t>(n)}, {1});
  auto rows = view(0, 7, storage, DType::kF32, {541, 277}, {277, 1});
  auto columns = view(0, 7, storage, DType::kF32, {277, 541}, {1, 277});  // transposed
  auto head = view(0, 7, storage, DType::kF32, {1001}, {1});
  Plan plan = single_file_plan(
      dir.in("a.bin"),
      {tensor("copy", {static_cast<std::int64_t>(n)}, {{flat, {0}}}),
       tensor("to_bf16", {541, 277}, {{rows, {0, 0}}}, DType::kF32, DType::kBF16),
       tensor("transposed", {277, 541}, {{columns, {0, 0}}}),
       tensor("to_f64", {1001}, {{head, {0}}}, DType::kF32, DType::kF64),
       tensor("after_gap", {541, 277}, {{rows, {0, 0}}}, DType::kF32, DType::kF16)});
  // A gap of 3 bytes before the last tensor: the file holds zeros there.
  PlacedTensor& last = plan.files[0].tensors.back();
  last.data_begin += 3;
  last.data_end += 3;
  std::uint64_t gap_begin = 8 + last.data_begin - 3;

  Bytes first;
  for (bool direct : {true, false}) {
    for (std::uint64_t buffer : {16ull << 10, 40000ull, 100ull, 1000ull, 16ull << 20}) {
      CAPTURE(direct);
      CAPTURE(buffer);
      run_and_check(plan, dir.out(), buffer, direct);
      Bytes out = file_bytes(dir.out() / "model.safetensors");
      CHECK(Bytes(out.begin() + static_cast<std::ptrdiff_t>(gap_begin),
                  out.begin() + static_cast<std::ptrdiff_t>(gap_begin + 3)) == Bytes(3));
      if (first.empty()) first = out;
      CHECK(out == first);
    }
  }
  CHECK(first.size() > 1'500'000);
}

TEST_CASE("side files, index and manifest; existing files are replaced") {
  InOutDir dir;
  write_file(dir.in("a.bin"), numbered_storage(12, 0));
  write_file(dir.in("config.json"), bytes_of(std::vector<char>{'{', '}', '\n'}));
  write_file(dir.out() / "model-00001-of-00002.safetensors",
             bytes_of(std::vector<char>{'o', 'l', 'd'}));
  Plan plan;
  plan.inputs = {dir.in("a.bin")};
  auto half = [](std::uint64_t begin) { return view(0, begin, 24, DType::kF32, {2, 3}, {3, 1}); };
  plan.files.push_back(
      output_file("model-00001-of-00002.safetensors", {tensor("a", {2, 3}, {{half(0), {0, 0}}})}));
  plan.files.push_back(
      output_file("model-00002-of-00002.safetensors",
                  {tensor("b", {2, 3}, {{half(24), {0, 0}}}, DType::kF32, DType::kBF16),
                   tensor("c\"\\\n", {0}, {})}));
  plan.index_json = "{\"weight_map\": {}}\n";
  plan.side_files.push_back({dir.in("config.json"), "config.json"});
  plan.side_files.push_back({dir.in("config.json"), "sub/extra.json"});
  std::vector<std::pair<std::uint64_t, std::uint64_t>> progress;
  ExecOptions options;
  options.on_progress = [&](std::uint64_t done, std::uint64_t total) {
    progress.emplace_back(done, total);
  };
  auto manifest = execute_plan(plan, dir.out(), options);
  REQUIRE_MESSAGE(manifest.ok(), manifest.error().message);
  CHECK(listing(dir.out()) == std::vector<std::string>{"ckptstream.manifest.json", "config.json",
                                                       "model-00001-of-00002.safetensors",
                                                       "model-00002-of-00002.safetensors",
                                                       "model.safetensors.index.json", "sub"});
  CHECK(file_bytes(dir.out() / "config.json") == file_bytes(dir.in("config.json")));
  CHECK(file_bytes(dir.out() / "sub" / "extra.json") == file_bytes(dir.in("config.json")));
  CHECK(file_bytes(dir.out() / "model.safetensors.index.json") ==
        bytes_of(std::vector<char>(plan.index_json.begin(), plan.index_json.end())));
  CHECK(file_bytes(dir.out() / "model-00001-of-00002.safetensors").size() == 8 + 24);
  REQUIRE(!progress.empty());
  CHECK(progress.back() == std::pair<std::uint64_t, std::uint64_t>{36, 36});
  CHECK(std::is_sorted(progress.begin(), progress.end()));

  auto reread = read_manifest(dir.out() / std::string(kManifestFileName));
  REQUIRE_MESSAGE(reread.ok(), reread.error().message);
  REQUIRE(reread->files.size() == 2);
  CHECK(reread->files[1].tensors[1].name == "c\"\\\n");
  CHECK(reread->files[1].tensors[1].xxh3_128 == xxh3_128_hex({}));
  CHECK(manifest_to_json(*reread) == manifest_to_json(*manifest));
  Bytes file1 = file_bytes(dir.out() / "model-00001-of-00002.safetensors");
  CHECK(reread->files[0].tensors[0].xxh3_128 ==
        xxh3_128_hex(Bytes(file1.begin() + 8, file1.end())));
  // Each file's header bytes, each tensor's dtype, shape and offsets, and the other files.
  CHECK(reread->files[0].header_xxh3_128 == xxh3_128_hex(Bytes(file1.begin(), file1.begin() + 8)));
  CHECK(reread->files[1].tensors[0].dtype == "BF16");
  CHECK(reread->files[1].tensors[0].shape == Shape{2, 3});
  CHECK(reread->files[1].tensors[0].data_end == 12);
  std::vector<std::string> others;
  for (const auto& other : reread->other_files) {
    others.push_back(other.name);
    CHECK(other.xxh3_128 == xxh3_128_hex(file_bytes(dir.out() / other.name)));
  }
  CHECK(others ==
        std::vector<std::string>{"config.json", "sub/extra.json", "model.safetensors.index.json"});
}

TEST_CASE("manifest JSON is indented and stable; bad manifests are named") {
  Manifest manifest;
  manifest.files = {{"m.safetensors",
                     40,
                     std::string(32, 'b'),
                     {{"w", std::string(32, 'a'), "BF16", {2, 3}, 0, 12}}},
                    {"e.safetensors", 8, std::string(32, 'c'), {}}};
  manifest.other_files = {{"config.json", 3, std::string(32, 'd')}};
  CHECK(manifest_to_json(manifest) ==
        "{\n  \"format\": \"ckptstream-manifest\",\n  \"version\": 2,\n  \"hash\": \"xxh3-128\",\n"
        "  \"files\": {\n    \"m.safetensors\": {\n      \"size\": 40,\n"
        "      \"header_xxh3_128\": \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\",\n      \"tensors\": {\n"
        "        \"w\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [0, 12], "
        "\"xxh3_128\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}\n      }\n    },\n"
        "    \"e.safetensors\": {\n      \"size\": 8,\n"
        "      \"header_xxh3_128\": \"cccccccccccccccccccccccccccccccc\",\n      \"tensors\": {}\n"
        "    }\n  },\n  \"other_files\": {\n"
        "    \"config.json\": {\"size\": 3, \"xxh3_128\": \"dddddddddddddddddddddddddddddddd\"}\n"
        "  }\n}\n");
  auto reparsed = parse_manifest(manifest_to_json(manifest), "m");
  REQUIRE_MESSAGE(reparsed.ok(), reparsed.error().message);
  CHECK(manifest_to_json(*reparsed) == manifest_to_json(manifest));
  CHECK(reparsed->files[0].tensors[0].shape == Shape{2, 3});
  CHECK(reparsed->files[0].tensors[0].data_end == 12);
  // A version 1 manifest (ckptstream before version 2) is still read: bytes only.
  auto v1 = parse_manifest(
      "{\"format\": \"ckptstream-manifest\", \"version\": 1, \"hash\": \"xxh3-128\", "
      "\"files\": {\"m.safetensors\": {\"size\": 40, \"tensors\": {\"w\": "
      "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}}}}",
      "v1");
  REQUIRE_MESSAGE(v1.ok(), v1.error().message);
  CHECK(v1->version == 1);
  CHECK(v1->files[0].header_xxh3_128.empty());
  CHECK(v1->files[0].tensors[0].xxh3_128 == std::string(32, 'a'));
  auto future = parse_manifest(
      "{\"format\": \"ckptstream-manifest\", \"version\": 3, \"hash\": \"xxh3-128\", "
      "\"files\": {}}",
      "v3");
  REQUIRE(!future.ok());
  CHECK(future.error().message.find("version") != std::string::npos);
  auto no_dtype = parse_manifest(
      "{\"format\": \"ckptstream-manifest\", \"version\": 2, \"hash\": \"xxh3-128\", "
      "\"files\": {\"m\": {\"size\": 1, \"header_xxh3_128\": \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\", "
      "\"tensors\": {\"w\": {\"xxh3_128\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}}}}, "
      "\"other_files\": {}}",
      "v2");
  REQUIRE(!no_dtype.ok());
  CHECK(no_dtype.error().message.find("\"dtype\"") != std::string::npos);
  CHECK(manifest_to_json(Manifest{}).find("\"files\": {}") != std::string::npos);
  InOutDir dir;
  write_file(dir.in("bad.json"), bytes_of(std::vector<char>{'{', '}'}));
  auto bad = read_manifest(dir.in("bad.json"));
  REQUIRE(!bad.ok());
  CHECK(bad.error().message.find("bad.json") != std::string::npos);
  auto missing = read_manifest(dir.in("missing.json"));
  REQUIRE(!missing.ok());
  CHECK(missing.error().kind == ErrorKind::kIo);
  TensorHasher hasher;
  hasher.update("ab", 2);
  hasher.update("c", 1);
  CHECK(hasher.hex_digest() == xxh3_128_hex(bytes_of(std::vector<char>{'a', 'b', 'c'})));
}

TEST_CASE("invalid plans fail before writing; failures leave the target untouched") {
  InOutDir dir;
  write_file(dir.in("a.bin"), numbered_storage(20, 0, 0));
  write_file(dir.out() / "keep.txt", bytes_of(std::vector<char>{'k'}));
  auto rows = [](std::uint64_t begin, std::int64_t n) {
    return view(0, begin, static_cast<std::uint64_t>(n) * 16, DType::kF32, {n, 4}, {4, 1});
  };
  auto expect_error = [&](const Plan& plan, const std::string& part1, const std::string& part2) {
    auto result = execute_plan(plan, dir.out(), {});
    REQUIRE(!result.ok());
    INFO(result.error().message);
    CHECK(result.error().message.find(part1) != std::string::npos);
    CHECK(result.error().message.find(part2) != std::string::npos);
    CHECK(listing(dir.out()) == std::vector<std::string>{"keep.txt"});
  };
  SUBCASE("hole") {
    expect_error(single_file_plan(dir.in("a.bin"), {tensor("w", {4, 4}, {{rows(0, 3), {0, 0}}})}),
                 "'w'", "holes");
  }
  SUBCASE("overlap") {
    expect_error(
        single_file_plan(dir.in("a.bin"),
                         {tensor("w", {4, 4}, {{rows(0, 3), {0, 0}}, {rows(0, 2), {2, 0}}})}),
        "'w'", "overlap");
  }
  SUBCASE("fragment outside the tensor") {
    expect_error(single_file_plan(dir.in("a.bin"), {tensor("w", {4, 4}, {{rows(0, 4), {1, 0}}})}),
                 "'w'", "outside");
  }
  SUBCASE("view past its storage") {
    auto ref = view(0, 0, 40, DType::kF32, {4, 4}, {4, 1});
    expect_error(single_file_plan(dir.in("a.bin"), {tensor("w", {4, 4}, {{ref, {0, 0}}})}), "a.bin",
                 "past its storage");
  }
  SUBCASE("storage past the end of the input (truncated source)") {
    expect_error(single_file_plan(dir.in("a.bin"), {tensor("w", {4, 4}, {{rows(40, 4), {0, 0}}})}),
                 "a.bin", "past the end");
  }
  SUBCASE("unconvertible dtype") {
    auto ref = view(0, 0, 64, DType::kI32, {4, 4}, {4, 1});
    expect_error(single_file_plan(dir.in("a.bin"),
                                  {tensor("w", {4, 4}, {{ref, {0, 0}}}, DType::kI32, DType::kF32)}),
                 "'w'", "convert");
  }
  SUBCASE("missing input") {
    Plan plan = single_file_plan(dir.in("nope.bin"), {});
    expect_error(plan, "nope.bin", "open");
  }
  SUBCASE("a failure after files were staged removes them") {
    Plan plan = single_file_plan(dir.in("a.bin"), {tensor("w", {4, 4}, {{rows(0, 4), {0, 0}}})});
    plan.side_files.push_back({dir.in("absent.json"), "config.json"});
    expect_error(plan, "absent.json", "config.json");
  }
  SUBCASE("unsafe or duplicate output names") {
    Plan plan = single_file_plan(dir.in("a.bin"), {});
    plan.files[0].name = "../escape.safetensors";
    expect_error(plan, "escape", "relative");
    plan.files[0].name = "ckptstream.manifest.json";
    expect_error(plan, "manifest", "twice");
  }
}
