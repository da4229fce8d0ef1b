// The executor without output files (stream_plan, hash_plan: they must agree with execute_plan
// byte for byte) and LoRA deltas fused while streaming, checked against torch
// (tests/fixtures/lora, made by tools/fixtures/make_lora_fixtures.py).
#include <doctest/doctest.h>
#include <simdjson.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "exec/dtype_convert.h"
#include "exec/executor.h"
#include "exec/manifest.h"
#include "plan_builders.h"
#include "temp_dir.h"

using namespace ckptstream;
namespace fs = std::filesystem;
using namespace ckptstream::testing;
using Bytes = std::vector<std::byte>;

namespace {

const fs::path kLoraFixtures = fs::path(CKPT_FIXTURES) / "lora";

template <class T>
std::vector<T> values_of(const Bytes& bytes, std::size_t begin, std::size_t count) {
  std::vector<T> values(count);
  std::memcpy(values.data(), bytes.data() + begin, count * sizeof(T));
  return values;
}

// A view of `shape` elements of `dtype`, contiguous unless `strides` is given, whose storage
// starts at byte `begin` of input `input` and holds `storage_elements` elements.
TensorRef view(std::size_t input, std::uint64_t begin, std::int64_t storage_elements, DType dtype,
               Shape shape, Shape strides = {}, std::int64_t offset = 0) {
  TensorRef ref;
  ref.input = input;
  ref.storage_begin = begin;
  ref.storage_nbytes = static_cast<std::uint64_t>(storage_elements) * element_size(dtype);
  ref.dtype = dtype;
  ref.strides = strides.empty() ? contiguous_strides(shape) : std::move(strides);
  ref.shape = std::move(shape);
  ref.offset = offset;
  return ref;
}

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    names.push_back(entry.path().lexically_relative(dir));
  std::sort(names.begin(), names.end());
  return names;
}

ExecOptions small_options(std::uint64_t buffer_bytes) {
  ExecOptions options;
  options.buffer_bytes = buffer_bytes;
  options.writeback_bytes = 256;
  return options;
}

// Checks execute_plan, hash_plan and stream_plan against each other: same manifest, and the
// streamed windows, in order, are the written bytes.
void check_agreement(const Plan& plan, const TempDir& dir, std::uint64_t buffer_bytes) {
  CAPTURE(buffer_bytes);
  ExecOptions options = small_options(buffer_bytes);
  fs::path out = dir / "out";
  fs::remove_all(out);
  fs::create_directory(out);
  auto written = execute_plan(plan, out, options);
  REQUIRE_MESSAGE(written.ok(), written.error().message);

  auto before = listing(dir.path);
  auto hashed = hash_plan(plan, options);
  REQUIRE_MESSAGE(hashed.ok(), hashed.error().message);
  CHECK(manifest_to_json(*hashed) == manifest_to_json(*written));

  std::map<std::pair<std::string, std::string>, Bytes> streamed;
  auto status = stream_plan(plan, options,
                            [&](const OutputFile& file, const PlacedTensor& placed,
                                std::uint64_t offset, std::span<const std::byte> bytes) -> Status {
                              Bytes& so_far = streamed[{file.name, placed.tensor.name}];
                              CHECK(offset == so_far.size());
                              so_far.insert(so_far.end(), bytes.begin(), bytes.end());
                              return {};
                            });
  REQUIRE_MESSAGE(status.ok(), status.error().message);
  CHECK(listing(dir.path) == before);  // neither hash_plan nor stream_plan wrote anything

  for (const OutputFile& file : plan.files) {
    Bytes bytes = file_bytes(out / file.name);
    for (const PlacedTensor& placed : file.tensors) {
      CAPTURE(placed.tensor.name);
      auto begin =
          bytes.begin() + static_cast<std::ptrdiff_t>(file.header.size() + placed.data_begin);
      Bytes want(begin, begin + static_cast<std::ptrdiff_t>(placed.data_end - placed.data_begin));
      Bytes got = streamed[{file.name, placed.tensor.name}];
      CHECK(got == want);
    }
  }
}

// A storage of `n` float32 values 1, 2, ... after `begin` bytes of noise.
Bytes numbered_storage(std::size_t n, std::size_t begin) {
  std::vector<float> values(n);
  std::iota(values.begin(), values.end(), 1.0f);
  Bytes bytes(begin, std::byte{0xAB});
  Bytes data = bytes_of(values);
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

// Several plans over one input of 240 numbered floats at byte 12: strided views, fragments
// tiling dims 0 and 1, conversions to bf16/f16/f64, two output files, an empty tensor.
Plan mixed_plan(const fs::path& input) {
  auto at = [](std::int64_t element, Shape shape, Shape strides = {}) {
    return view(0, 12, 240, DType::kF32, std::move(shape), std::move(strides), element);
  };
  Plan plan;
  plan.inputs = {input};
  plan.files.push_back(output_file(
      "model-00001-of-00002.safetensors",
      {tensor("whole", {5, 7}, {{at(0, {5, 7}), {0, 0}}}),
       tensor("transposed", {7, 5}, {{at(0, {7, 5}, {1, 7}), {0, 0}}}),
       tensor("sliced", {4, 3}, {{at(3, {4, 3}, {14, 2}), {0, 0}}}, DType::kF32, DType::kBF16),
       tensor("empty", {0, 3}, {{at(0, {0, 3}), {0, 0}}})}));
  plan.files.push_back(
      output_file("model-00002-of-00002.safetensors",
                  {tensor("rows", {5, 4}, {{at(40, {2, 4}), {0, 0}}, {at(60, {3, 4}), {2, 0}}},
                          DType::kF32, DType::kF16),
                   tensor("cols", {3, 7}, {{at(100, {3, 3}), {0, 0}}, {at(130, {3, 4}), {0, 3}}},
                          DType::kF32, DType::kF64),
                   tensor("scalar", {}, {{at(239, {}), {}}})}));
  return plan;
}

// W [out, in] + scale * (B @ A) in float32 (k ascending), as add_lora computes it.
std::vector<float> naive_fuse(const std::vector<float>& w, const std::vector<float>& a,
                              const std::vector<float>& b, std::int64_t rows, std::int64_t cols,
                              std::int64_t rank, float scale) {
  std::vector<float> out(w);
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      float delta = b[i * rank] * a[j];
      for (std::int64_t k = 1; k < rank; ++k) delta += b[i * rank + k] * a[k * cols + j];
      out[i * cols + j] = w[i * cols + j] + delta * scale;
    }
  }
  return out;
}

// --- safetensors fixtures ------------------------------------------------------------------------

struct StoredTensor {
  DType dtype;
  Shape shape;
  std::uint64_t begin;  // absolute byte offset in the file
  std::uint64_t nbytes;
};

std::map<std::string, StoredTensor> read_safetensors_index(const fs::path& path) {
  Bytes bytes = file_bytes(path);
  REQUIRE(bytes.size() >= 8);
  std::uint64_t header_size;
  std::memcpy(&header_size, bytes.data(), 8);
  simdjson::dom::parser parser;
  simdjson::padded_string json(reinterpret_cast<const char*>(bytes.data()) + 8, header_size);
  simdjson::dom::object root = parser.parse(json).get_object().value();
  std::map<std::string, StoredTensor> tensors;
  for (auto [key, value] : root) {
    if (key == "__metadata__") continue;
    StoredTensor t{};
    t.dtype = dtype_from_safetensors_name(std::string_view(value["dtype"])).value();
    for (auto d : value["shape"].get_array()) t.shape.push_back(int64_t(d));
    auto offsets = value["data_offsets"].get_array();
    t.begin = 8 + header_size + uint64_t(offsets.at(0));
    t.nbytes = uint64_t(offsets.at(1)) - uint64_t(offsets.at(0));
    tensors.emplace(std::string(key), t);
  }
  return tensors;
}

// The stored tensor as one contiguous fragment of input `input`.
LogicalTensor stored(const std::string& name, const StoredTensor& t, std::size_t input) {
  auto n = static_cast<std::int64_t>(t.nbytes / element_size(t.dtype));
  return tensor(name, t.shape, {{view(input, t.begin, n, t.dtype, t.shape), Shape(t.shape.size())}},
                t.dtype, t.dtype);
}

// The same, cut in two fragments along dim 0 at `row`.
LogicalTensor stored_in_two(const std::string& name, const StoredTensor& t, std::size_t input,
                            std::int64_t row) {
  LogicalTensor whole = stored(name, t, input);
  const TensorRef& ref = whole.fragments[0].source;
  auto n = static_cast<std::int64_t>(t.nbytes / element_size(t.dtype));
  Shape top = t.shape, bottom = t.shape;
  top[0] = row;
  bottom[0] = t.shape[0] - row;
  return tensor(
      name, t.shape,
      {{view(input, t.begin, n, t.dtype, bottom, ref.strides, row * ref.strides[0]), {row, 0}},
       {view(input, t.begin, n, t.dtype, top, ref.strides), {0, 0}}},
      t.dtype, t.dtype);
}

// Position of a 16-bit float in value order, so that differences count ulps.
int ordered16(std::uint16_t bits) {
  return (bits & 0x8000) ? -static_cast<int>(bits & 0x7FFF) : static_cast<int>(bits);
}

struct Agreement {
  std::size_t exact = 0;
  std::size_t close = 0;  // within tolerance (f32) or 1 ulp (16-bit)
  std::size_t far = 0;
  double worst = 0;  // largest |difference| (f32) or ulps (16-bit)
};

Agreement compare(DType dtype, const Bytes& got, const Bytes& want) {
  Agreement result;
  REQUIRE(got.size() == want.size());
  if (dtype == DType::kF32) {
    auto g = values_of<float>(got, 0, got.size() / 4),
         w = values_of<float>(want, 0, got.size() / 4);
    for (std::size_t i = 0; i < g.size(); ++i) {
      double d = std::fabs(static_cast<double>(g[i]) - w[i]);
      result.worst = std::max(result.worst, d);
      if (d == 0)
        ++result.exact;
      else if (d <= 1e-6 * std::max(1.0, std::fabs(static_cast<double>(w[i]))))
        ++result.close;
      else
        ++result.far;
    }
    return result;
  }
  auto g = values_of<std::uint16_t>(got, 0, got.size() / 2);
  auto w = values_of<std::uint16_t>(want, 0, got.size() / 2);
  for (std::size_t i = 0; i < g.size(); ++i) {
    int d = std::abs(ordered16(g[i]) - ordered16(w[i]));
    result.worst = std::max(result.worst, static_cast<double>(d));
    if (d == 0)
      ++result.exact;
    else if (d == 1)
      ++result.close;
    else
      ++result.far;
  }
  return result;
}

struct LoraCase {
  std::string name;
  double scale;
  DType out;
};

std::vector<LoraCase> lora_cases() {
  Bytes text = file_bytes(kLoraFixtures / "lora_fixtures.json");
  simdjson::dom::parser parser;
  simdjson::padded_string json(reinterpret_cast<const char*>(text.data()), text.size());
  std::vector<LoraCase> cases;
  for (auto entry : parser.parse(json)["cases"].get_array()) {
    cases.push_back({std::string(std::string_view(entry["name"])), double(entry["scale"]),
                     dtype_from_safetensors_name(std::string_view(entry["out_dtype"])).value()});
  }
  return cases;
}

}  // namespace

TEST_CASE("hash_plan and stream_plan agree with execute_plan") {
  TempDir dir("stream");
  write_file(dir / "in/a.bin", numbered_storage(240, 12));
  Plan plan = mixed_plan(dir / "in/a.bin");
  for (std::uint64_t buffer : {16ull << 20, 64ull, 36ull, 4ull}) check_agreement(plan, dir, buffer);
}

TEST_CASE("stream_plan: windows follow the buffer; a visitor error stops the run") {
  TempDir dir("stream");
  write_file(dir / "in/a.bin", numbered_storage(240, 12));
  Plan plan = mixed_plan(dir / "in/a.bin");
  int calls = 0;
  auto status = stream_plan(plan, small_options(64),
                            [&](const OutputFile&, const PlacedTensor& placed, std::uint64_t,
                                std::span<const std::byte> bytes) -> Status {
                              CHECK(bytes.size() <= 64);
                              if (++calls == 2) return mismatch("visitor says stop");
                              CHECK(placed.tensor.name == "whole");
                              return {};
                            });
  REQUIRE(!status.ok());
  CHECK(calls == 2);
  CHECK(status.error().kind == ErrorKind::kMismatch);
  CHECK(status.error().message.find("visitor says stop") != std::string::npos);
  CHECK(status.error().message.find("'whole'") != std::string::npos);
  CHECK(status.error().message.find("model-00001-of-00002.safetensors") != std::string::npos);

  // Progress counts streamed bytes as it counts written ones.
  std::uint64_t last_done = 0, last_total = 0;
  ExecOptions options = small_options(64);
  options.on_progress = [&](std::uint64_t done, std::uint64_t total) {
    CHECK(done >= last_done);
    last_done = done;
    last_total = total;
  };
  auto hashed = hash_plan(plan, options);
  REQUIRE(hashed.ok());
  CHECK(last_done == last_total);
  CHECK(last_total == 35 * 4 + 35 * 4 + 12 * 2 + 20 * 2 + 21 * 8 + 4);

  // Invalid plans fail as execute_plan does, before any window.
  plan.files[0].tensors[0].tensor.fragments.clear();
  calls = 0;
  auto invalid = stream_plan(plan, {}, [&](auto&&...) -> Status {
    ++calls;
    return {};
  });
  REQUIRE(!invalid.ok());
  CHECK(invalid.error().message.find("holes") != std::string::npos);
  CHECK(calls == 0);
  CHECK(!hash_plan(plan, {}).ok());
}

TEST_CASE("a LoRA delta is fused while streaming, whatever the windows and fragments") {
  TempDir dir("stream");
  // W [5, 7] in rows 0-1 and 2-4, A [3, 7] stored transposed ([7, 3] in storage), B [5, 3].
  const std::int64_t rows = 5, cols = 7, rank = 3;
  std::vector<float> w(rows * cols), a(rank * cols), a_t(rank * cols), b(rows * rank);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.01f * static_cast<float>(i) - 0.1f;
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::sin(static_cast<float>(i)) * 0.3f;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::cos(static_cast<float>(i)) * 0.05f;
  for (std::int64_t k = 0; k < rank; ++k)
    for (std::int64_t j = 0; j < cols; ++j) a_t[j * rank + k] = a[k * cols + j];
  Bytes input = bytes_of(w);
  Bytes more = bytes_of(a_t);
  input.insert(input.end(), more.begin(), more.end());
  more = bytes_of(b);
  input.insert(input.end(), more.begin(), more.end());
  write_file(dir / "in/lora.bin", input);

  const float scale = 16.0f / 3.0f;
  auto delta = std::make_shared<LoraDelta>();
  delta->a = tensor("A", {rank, cols},
                    {{view(0, 35 * 4, 21, DType::kF32, {rank, cols}, {1, rank}), {0, 0}}});
  delta->b = tensor("B", {rows, rank}, {{view(0, 56 * 4, 15, DType::kF32, {rows, rank}), {0, 0}}});
  delta->scale = 16.0 / 3.0;
  auto fused = [&](DType out) {
    LogicalTensor t = tensor("w", {rows, cols},
                             {{view(0, 0, 35, DType::kF32, {3, cols}, {}, 2 * cols), {2, 0}},
                              {view(0, 0, 35, DType::kF32, {2, cols}), {0, 0}}},
                             DType::kF32, out);
    t.lora = delta;
    return t;
  };
  Plan plan;
  plan.inputs = {dir / "in/lora.bin"};
  plan.files.push_back(output_file("model.safetensors",
                                   {fused(DType::kF32), fused(DType::kBF16), fused(DType::kF64)}));
  plan.files[0].tensors[1].tensor.name = "w_bf16";
  plan.files[0].tensors[2].tensor.name = "w_f64";

  std::vector<float> want = naive_fuse(w, a, b, rows, cols, rank, scale);
  Bytes want_bf16(want.size() * 2), want_f64(want.size() * 8);
  convert_elements(DType::kF32, DType::kBF16, bytes_of(want).data(), want_bf16.data(), want.size());
  convert_elements(DType::kF32, DType::kF64, bytes_of(want).data(), want_f64.data(), want.size());
  for (std::uint64_t buffer : {16ull << 20, 64ull, 100ull, 4ull}) {
    CAPTURE(buffer);
    check_agreement(plan, dir, buffer);
    Bytes out = file_bytes(dir / "out/model.safetensors");
    CHECK(values_of<float>(out, 8, want.size()) == want);
    CHECK(Bytes(out.begin() + 8 + 140, out.begin() + 8 + 140 + 70) == want_bf16);
    CHECK(Bytes(out.begin() + 8 + 210, out.end()) == want_f64);
  }
  // The delta changed something, and scale 0 changes nothing.
  CHECK(want != w);
  delta->scale = 0.0;
  plan.files[0].tensors.resize(1);
  fs::create_directory(dir / "zero");
  auto zero = execute_plan(plan, dir / "zero", {});
  REQUIRE(zero.ok());
  CHECK(values_of<float>(file_bytes(dir / "zero/model.safetensors"), 8, w.size()) == w);
}

TEST_CASE("LoRA deltas that cannot be fused are refused before writing") {
  TempDir dir("stream");
  write_file(dir / "in/a.bin", numbered_storage(64, 0));
  auto make = [&](Shape w_shape, Shape a_shape, Shape b_shape, DType a_dtype = DType::kF32) {
    LogicalTensor w = tensor("w", w_shape, {{view(0, 0, 64, DType::kF32, w_shape), {0, 0}}});
    auto delta = std::make_shared<LoraDelta>();
    delta->a = tensor("A", a_shape, {{view(0, 0, 64, a_dtype, a_shape), {0, 0}}}, a_dtype, a_dtype);
    delta->b = tensor("B", b_shape, {{view(0, 0, 64, DType::kF32, b_shape), {0, 0}}});
    w.lora = delta;
    Plan plan;
    plan.inputs = {dir / "in/a.bin"};
    plan.files.push_back(output_file("model.safetensors", {w}));
    return plan;
  };
  auto expect_error = [&](const Plan& plan, ErrorKind kind, const std::string& part) {
    auto result = execute_plan(plan, dir / "out", {});
    REQUIRE(!result.ok());
    INFO(result.error().message);
    CHECK(result.error().kind == kind);
    CHECK(result.error().message.find(part) != std::string::npos);
    CHECK(result.error().message.find("'w'") != std::string::npos);
    CHECK(!fs::exists(dir / "out/model.safetensors"));
    CHECK(!hash_plan(plan, {}).ok());
  };
  fs::create_directory(dir / "out");
  REQUIRE(execute_plan(make({4, 6}, {2, 6}, {4, 2}), dir / "out", {}).ok());
  fs::remove(dir / "out/model.safetensors");
  expect_error(make({4, 6}, {2, 5}, {4, 2}), ErrorKind::kInvalidInput, "do not fit");
  expect_error(make({4, 6}, {2, 6}, {4, 3}), ErrorKind::kInvalidInput, "do not fit");
  expect_error(make({4, 6}, {2, 6}, {3, 2}), ErrorKind::kInvalidInput, "do not fit");
  expect_error(make({4, 6}, {0, 6}, {4, 0}), ErrorKind::kInvalidInput, "do not fit");
  expect_error(make({24}, {2, 6}, {4, 2}), ErrorKind::kInvalidInput, "do not fit");
  expect_error(make({4, 6}, {2, 6}, {4, 2}, DType::kI32), ErrorKind::kUnsupported, "floating");
  // A and B past the memory limit (W itself is never read: the check comes first).
  Plan huge = make({4, 6}, {2, 6}, {4, 2});
  auto& w = huge.files[0].tensors[0].tensor;
  w.shape = {1, 70'000'000};
  auto delta = std::make_shared<LoraDelta>(*w.lora);
  delta->a.shape = {1, 70'000'000};
  delta->b.shape = {1, 1};
  w.lora = delta;
  huge.files[0].tensors[0].data_end = 280'000'000;
  expect_error(huge, ErrorKind::kUnsupported, "MiB");
  // A's fragments are checked like any tensor's.
  Plan bad_a = make({4, 6}, {2, 6}, {4, 2});
  delta = std::make_shared<LoraDelta>(*bad_a.files[0].tensors[0].tensor.lora);
  delta->a.fragments[0].source.storage_nbytes = 1 << 20;
  bad_a.files[0].tensors[0].tensor.lora = delta;
  expect_error(bad_a, ErrorKind::kInvalidInput, "LoRA A");
}

TEST_CASE("LoRA fusion matches torch: (W.float() + scale * (B.float() @ A.float())).to(dtype)") {
  auto inputs = read_safetensors_index(kLoraFixtures / "exec_inputs.safetensors");
  auto expected = read_safetensors_index(kLoraFixtures / "exec_expected.safetensors");
  Bytes expected_bytes = file_bytes(kLoraFixtures / "exec_expected.safetensors");
  auto cases = lora_cases();
  REQUIRE(cases.size() >= 6);
  std::vector<LogicalTensor> tensors;
  for (const LoraCase& c : cases) {
    const StoredTensor& w = inputs.at(c.name + ".W");
    LogicalTensor fused = stored_in_two(c.name, w, 0, w.shape[0] / 3);
    fused.dtype = c.out;
    auto delta = std::make_shared<LoraDelta>();
    if (inputs.count(c.name + ".A")) {
      delta->a = stored("A", inputs.at(c.name + ".A"), 0);
    } else {  // A stored transposed: a [r, in] view of the [in, r] storage
      const StoredTensor& a_t = inputs.at(c.name + ".A_t");
      delta->a = stored("A", a_t, 0);
      delta->a.shape = {a_t.shape[1], a_t.shape[0]};
      TensorRef& ref = delta->a.fragments[0].source;
      ref.shape = delta->a.shape;
      ref.strides = {1, a_t.shape[1]};
    }
    delta->b = stored("B", inputs.at(c.name + ".B"), 0);
    delta->scale = c.scale;
    fused.lora = delta;
    tensors.push_back(fused);
  }
  Plan plan;
  plan.inputs = {kLoraFixtures / "exec_inputs.safetensors"};
  plan.files.push_back(output_file("model.safetensors", tensors));
  TempDir dir("stream");
  for (std::uint64_t buffer : {16ull << 20, 1000ull}) {
    CAPTURE(buffer);
    check_agreement(plan, dir, buffer);
    Bytes out = file_bytes(dir / "out/model.safetensors");
    for (const PlacedTensor& placed : plan.files[0].tensors) {
      const std::string& name = placed.tensor.name;
      CAPTURE(name);
      const StoredTensor& want_at = expected.at(name);
      REQUIRE(want_at.dtype == placed.tensor.dtype);
      Bytes want(
          expected_bytes.begin() + static_cast<std::ptrdiff_t>(want_at.begin),
          expected_bytes.begin() + static_cast<std::ptrdiff_t>(want_at.begin + want_at.nbytes));
      auto begin = out.begin() + static_cast<std::ptrdiff_t>(8 + placed.data_begin);
      Bytes got(begin, begin + static_cast<std::ptrdiff_t>(want.size()));
      Agreement agreement = compare(placed.tensor.dtype, got, want);
      std::size_t n = agreement.exact + agreement.close + agreement.far;
      if (buffer > 1000)  // the measurement, once
        MESSAGE(name << ": " << agreement.exact << "/" << n << " exact, " << agreement.close
                     << " close, " << agreement.far << " far, worst " << agreement.worst);
      CHECK(agreement.far == 0);
      if (placed.tensor.dtype != DType::kF32) CHECK(agreement.close * 100 < n);
    }
  }
}

// Block-quantized FP8 (plan.h BlockScaleRef): every float8_e4m3fn value, known decodings, each
// element scaled by its own block's scale, through any view of the weight.
TEST_CASE("block-scaled float8_e4m3fn views stream as float32(w) * scale of the element's block") {
  TempDir dir("fp8");
  // A [16, 16] weight holding the 256 byte values in order, 2 x 2 blocks of 8 x 8, scales after.
  Bytes file(256 + 4 * 4);
  for (int b = 0; b < 256; ++b) file[static_cast<std::size_t>(b)] = static_cast<std::byte>(b);
  const float scales[] = {1.0f, 2.0f, 0.5f, -4.0f};
  std::memcpy(file.data() + 256, scales, sizeof scales);
  write_file(dir / "in/w.bin", file);
  auto ref = std::make_shared<BlockScaleRef>();
  ref->storage_begin = 256;
  ref->grid_rows = ref->grid_cols = 2;
  ref->weight_cols = 16;
  ref->block_rows = ref->block_cols = 8;
  auto scaled = [&](Shape shape, Shape strides, std::int64_t offset) {
    TensorRef v = view(0, 0, 256, DType::kF8E4M3FN, std::move(shape), std::move(strides), offset);
    v.block_scale = ref;
    return v;
  };
  Plan plan;
  plan.inputs = {dir / "in/w.bin"};
  plan.files.push_back(output_file(
      "model.safetensors",
      {tensor("whole", {16, 16}, {{scaled({16, 16}, {}, 0), {0, 0}}}, DType::kF32, DType::kF32),
       // rows 4..11, columns 6..9 transposed: elements keep their own blocks' scales
       tensor("view", {4, 8}, {{scaled({4, 8}, {1, 16}, 4 * 16 + 6), {0, 0}}}, DType::kF32,
              DType::kF32)}));
  std::map<std::string, std::vector<float>> got;
  auto status = stream_plan(plan, small_options(64),
                            [&](const OutputFile&, const PlacedTensor& placed, std::uint64_t,
                                std::span<const std::byte> bytes) -> Status {
                              auto& v = got[placed.tensor.name];
                              std::size_t at = v.size();
                              v.resize(at + bytes.size() / 4);
                              std::memcpy(v.data() + at, bytes.data(), bytes.size());
                              return {};
                            });
  REQUIRE(status.ok());
  const auto& w = got["whole"];
  REQUIRE(w.size() == 256);
  auto value = [&](int b) { return w[static_cast<std::size_t>(b)]; };
  // Row 0 (block row 0): bytes 0..7 scale 1, 8..15 scale 2.
  CHECK(value(0x00) == 0.0f);
  CHECK(value(0x01) == std::ldexp(1.0f, -9));      // the smallest subnormal
  CHECK(value(0x07) == 7 * std::ldexp(1.0f, -9));  // the largest subnormal
  CHECK(value(0x08) == 2 * std::ldexp(1.0f, -6));  // the smallest normal, block (0, 1)
  // Byte b sits at row b / 16, column b % 16: block (row / 8, column / 8).
  CHECK(value(0x38) == 1.0f * 2);         // row 3, column 8: 1.0 in block (0, 1)
  CHECK(value(0x7E) == 448.0f * 2);       // row 7, column 14: the largest value
  CHECK(value(0xC0) == -2.0f * 0.5f);     // row 12, column 0: block (1, 0)
  CHECK(value(0xF8) == -256.0f * -4.0f);  // row 15, column 8: block (1, 1)
  CHECK(std::isnan(value(0x7F)));
  CHECK(std::isnan(value(0xFF)));
  CHECK(value(0x80) == -0.0f);
  CHECK(std::signbit(value(0x80)));
  // The transposed view reads each element where it is, with its block's scale.
  const auto& v = got["view"];
  REQUIRE(v.size() == 32);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 8; ++j) {
      float want = w[static_cast<std::size_t>(70 + i + 16 * j)];
      float have = v[static_cast<std::size_t>(i * 8 + j)];
      CHECK((have == want || (std::isnan(have) && std::isnan(want))));
    }
}
