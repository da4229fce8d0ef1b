// Reference comparison (`verify --reference`, verl's `test`): models written as real safetensors
// files (by hand with build_header, and by plan_output + execute_plan), exact and tolerant value
// rules, NaN and infinity, name sets, shapes and dtypes, sharded references, plans streamed with
// stream_plan, and the stream core fed by a fake window source.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "exec/dtype_convert.h"
#include "exec/executor.h"
#include "plan_builders.h"
#include "safetensors/safetensors.h"
#include "temp_dir.h"
#include "verify/compare.h"

using namespace ckptstream;
namespace fs = std::filesystem;
using ckptstream::testing::bytes_of;
using ckptstream::testing::TempDir;
using ckptstream::testing::write_file;
using Bytes = std::vector<std::byte>;

namespace {

struct Tensor {
  std::string name;
  DType dtype;
  Shape shape;
  Bytes bytes;
};

Tensor f32(std::string name, Shape shape, std::vector<float> values) {
  return {std::move(name), DType::kF32, std::move(shape), bytes_of(values)};
}

// A safetensors file holding `tensors` back to back in this order.
void write_safetensors(const fs::path& path, const std::vector<Tensor>& tensors) {
  std::vector<PlacedTensor> placed;
  std::string data;
  for (const auto& t : tensors) {
    LogicalTensor logical;
    logical.name = t.name;
    logical.dtype = logical.source_dtype = t.dtype;
    logical.shape = t.shape;
    placed.push_back({logical, data.size(), data.size() + t.bytes.size()});
    data.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
  }
  write_file(path, safetensors::build_header(placed) + data);
}

std::vector<Tensor> base_model() {
  return {f32("model.embed.weight", {2, 3}, {1, 2, 3, 4, 5, 6}),
          f32("model.norm.weight", {3}, {1, 1, 1}),
          {"model.positions", DType::kI64, {2}, bytes_of(std::vector<std::int64_t>{7, 8})},
          f32("lm_head.weight", {2, 3}, {1, 2, 3, 4, 5, 6})};
}

CompareReport compare(const fs::path& candidate, const fs::path& reference,
                      const CompareOptions& options = {}) {
  auto report = compare_dirs(candidate, reference, options);
  REQUIRE_MESSAGE(report.ok(), report.error().message);
  return std::move(report).value();
}

bool has_problem(const CompareReport& report, const std::string& text) {
  for (const auto& problem : report.problems)
    if (problem == text) return true;
  return false;
}

std::string problems_text(const CompareReport& report) {
  std::string text;
  for (const auto& problem : report.problems) text += problem + "\n";
  return text;
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

}  // namespace

TEST_CASE("identical models compare equal; the report counts what was compared") {
  TempDir dir("compare");
  write_safetensors(dir.sub("out") / "model.safetensors", base_model());
  write_safetensors(dir.sub("ref") / "model.safetensors", base_model());
  std::uint64_t last_done = 0, last_total = 0;
  CompareOptions options;
  options.on_progress = [&](std::uint64_t done, std::uint64_t total) {
    last_done = done;
    last_total = total;
  };
  auto report = compare(dir.sub("out"), dir.sub("ref"), options);
  CHECK_MESSAGE(report.ok(), problems_text(report));
  CHECK(report.tensors_compared == 4);
  CHECK(report.bytes_compared == 24 + 12 + 16 + 24);
  CHECK(report.tensors.size() == 4);
  CHECK(!report.worst);
  CHECK(last_done == 76);
  CHECK(last_total == 76);
  // A single file works as a model too.
  CHECK(compare(dir.sub("out") / "model.safetensors", dir.sub("ref")).ok());
}

TEST_CASE("one flipped value: an exact mismatch names the tensor and the element") {
  TempDir dir("compare");
  auto changed = base_model();
  changed[0] = f32("model.embed.weight", {2, 3}, {1, 2, 3, 4, 5.5f, 6});
  write_safetensors(dir.sub("out") / "model.safetensors", changed);
  write_safetensors(dir.sub("ref") / "model.safetensors", base_model());
  auto report = compare(dir.sub("out"), dir.sub("ref"));
  REQUIRE(report.problems.size() == 1);
  CHECK(report.problems[0] ==
        "model.embed.weight: 1 of 6 elements differ (first at 4), max abs diff 0.5, max rel diff "
        "0.1");
  REQUIRE(report.worst);
  CHECK(report.worst->name == "model.embed.weight");
  CHECK(report.worst->mismatches == 1);
  CHECK(report.worst->first_mismatch == 4);
  CHECK(report.worst->max_abs_diff == 0.5);

  // Within atol it passes, and the worst tensor still shows the difference.
  CompareOptions loose;
  loose.atol = 0.5;
  auto within = compare(dir.sub("out"), dir.sub("ref"), loose);
  CHECK_MESSAGE(within.ok(), problems_text(within));
  REQUIRE(within.worst);
  CHECK(within.worst->mismatches == 0);
  CHECK(describe(*within.worst) ==
        "model.embed.weight: equal (max abs diff 0.5, max rel diff 0.1)");
  loose.atol = 0.4;
  CHECK(!compare(dir.sub("out"), dir.sub("ref"), loose).ok());
  // rtol is relative to the reference: |5.5 - 5| = 0.5 <= 0.1 * 5.
  CompareOptions relative;
  relative.rtol = 0.1;
  CHECK(compare(dir.sub("out"), dir.sub("ref"), relative).ok());
  relative.rtol = 0.09;
  CHECK(!compare(dir.sub("out"), dir.sub("ref"), relative).ok());
}

TEST_CASE("the worst tensor: mismatches first, then the largest absolute difference") {
  TempDir dir("compare");
  write_safetensors(dir.sub("ref") / "model.safetensors",
                    {f32("a", {2}, {1, 2}), f32("b", {2}, {1, 2}), f32("c", {2}, {1, 2})});
  write_safetensors(dir.sub("out") / "model.safetensors",
                    {f32("a", {2}, {1, 2.25f}), f32("b", {2}, {9, 2}), f32("c", {2}, {1, 2.5f})});
  auto report = compare(dir.sub("out"), dir.sub("ref"));
  CHECK(report.problems.size() == 3);
  REQUIRE(report.worst);
  CHECK(report.worst->name == "b");
  CHECK(report.worst->max_abs_diff == 8);
  CHECK(report.worst->max_rel_diff == 8);

  CompareOptions options;
  options.atol = 1;
  auto tolerant = compare(dir.sub("out"), dir.sub("ref"), options);
  CHECK(tolerant.problems.size() == 1);
  REQUIRE(tolerant.worst);
  CHECK(tolerant.worst->name == "b");  // mismatching beats larger-but-within
}

TEST_CASE("NaN matches only NaN, infinity only the same infinity") {
  TempDir dir("compare");
  float other_nan;
  std::uint32_t bits = 0x7FC00001;
  std::memcpy(&other_nan, &bits, 4);
  write_safetensors(
      dir.sub("ref") / "model.safetensors",
      {f32("nan_nan", {2}, {kNaN, 1}), f32("nan_payload", {1}, {kNaN}), f32("nan_num", {1}, {1}),
       f32("inf_inf", {2}, {kInf, -kInf}), f32("inf_neg", {1}, {kInf}), f32("inf_num", {1}, {kInf}),
       f32("zero", {1}, {0.0f})});
  write_safetensors(
      dir.sub("out") / "model.safetensors",
      {f32("nan_nan", {2}, {kNaN, 1}), f32("nan_payload", {1}, {other_nan}),
       f32("nan_num", {1}, {kNaN}), f32("inf_inf", {2}, {kInf, -kInf}),
       f32("inf_neg", {1}, {-kInf}), f32("inf_num", {1}, {3.0e38f}), f32("zero", {1}, {-0.0f})});
  // Exact: bytes. Identical NaNs match; another payload and -0.0 do not.
  auto exact = compare(dir.sub("out"), dir.sub("ref"));
  std::vector<std::string> differing;
  for (const auto& t : exact.tensors)
    if (t.mismatches) differing.push_back(t.name);
  CHECK(differing ==
        std::vector<std::string>{"nan_payload", "nan_num", "inf_neg", "inf_num", "zero"});
  REQUIRE(exact.worst);
  CHECK(exact.worst->name == "nan_num");  // the first infinite difference
  CHECK(std::isinf(exact.worst->max_abs_diff));

  // With a tolerance, values: any NaN matches NaN, 0.0 == -0.0; a huge rtol never lets a number
  // match an infinity or a NaN.
  CompareOptions options;
  options.atol = 1e-6;
  options.rtol = 1e30;
  auto tolerant = compare(dir.sub("out"), dir.sub("ref"), options);
  differing.clear();
  for (const auto& t : tolerant.tensors)
    if (t.mismatches) differing.push_back(t.name);
  CHECK(differing == std::vector<std::string>{"nan_num", "inf_neg", "inf_num"});
}

TEST_CASE("integer tensors compare exactly even with a tolerance") {
  TempDir dir("compare");
  write_safetensors(dir.sub("ref") / "model.safetensors",
                    {{"ids", DType::kI32, {3}, bytes_of(std::vector<std::int32_t>{1, -2, 3})},
                     {"mask", DType::kBool, {2}, bytes_of(std::vector<std::uint8_t>{1, 0})}});
  write_safetensors(dir.sub("out") / "model.safetensors",
                    {{"ids", DType::kI32, {3}, bytes_of(std::vector<std::int32_t>{1, -4, 3})},
                     {"mask", DType::kBool, {2}, bytes_of(std::vector<std::uint8_t>{1, 0})}});
  CompareOptions options;
  options.atol = 10;
  auto report = compare(dir.sub("out"), dir.sub("ref"), options);
  REQUIRE(report.problems.size() == 1);
  CHECK(report.problems[0] ==
        "ids: 1 of 3 elements differ (first at 1), max abs diff 2, max rel diff 1");
}

TEST_CASE("missing and extra names are each listed; skip patterns leave names out") {
  TempDir dir("compare");
  auto out = base_model();
  out.pop_back();                                         // no lm_head.weight
  out.push_back(f32("score.weight", {1, 3}, {1, 2, 3}));  // a value head
  write_safetensors(dir.sub("out") / "model.safetensors", out);
  write_safetensors(dir.sub("ref") / "model.safetensors", base_model());
  auto report = compare(dir.sub("out"), dir.sub("ref"));
  CHECK(report.missing == std::vector<std::string>{"lm_head.weight"});
  CHECK(report.extra == std::vector<std::string>{"score.weight"});
  CHECK(has_problem(report, "lm_head.weight: in the reference, not in the candidate"));
  CHECK(has_problem(report, "score.weight: in the candidate, not in the reference"));
  CHECK(report.problems.size() == 2);
  CHECK(report.tensors_compared == 3);

  CompareOptions options;
  options.skip = {"lm_head.weight", "score.*"};
  auto skipping = compare(dir.sub("out"), dir.sub("ref"), options);
  CHECK_MESSAGE(skipping.ok(), problems_text(skipping));
  CHECK(skipping.tensors_skipped == 1);  // score.weight; lm_head.weight is only in the reference
  options.skip = {"*.embed.*"};
  auto glob = compare(dir.sub("out"), dir.sub("ref"), options);
  CHECK(glob.tensors_compared == 2);
}

TEST_CASE("shape and dtype differences are problems; cast_reference compares as verl's test") {
  TempDir dir("compare");
  std::vector<float> values = {1.0f, 1.00390625f, 3.14159f, -2.5f, 1e-3f, 65504.0f};
  Bytes bf16(values.size() * 2);
  convert_elements(DType::kF32, DType::kBF16, bytes_of(values).data(), bf16.data(), values.size());
  write_safetensors(dir.sub("ref") / "model.safetensors",
                    {f32("w", {2, 3}, values), f32("v", {2, 3}, values)});
  write_safetensors(dir.sub("out") / "model.safetensors",
                    {{"w", DType::kBF16, {2, 3}, bf16}, f32("v", {3, 2}, values)});
  auto report = compare(dir.sub("out"), dir.sub("ref"));
  CHECK(has_problem(report, "w: dtype BF16, the reference has F32"));
  CHECK(has_problem(report, "v: shape [3, 2], the reference has [2, 3]"));
  CHECK(report.problems.size() == 2);
  CHECK(report.tensors_compared == 0);

  CompareOptions options;
  options.cast_reference = true;
  auto cast = compare(dir.sub("out"), dir.sub("ref"), options);
  CHECK(cast.problems == std::vector<std::string>{"v: shape [3, 2], the reference has [2, 3]"});
  REQUIRE(cast.tensors.size() == 1);
  CHECK(cast.tensors[0].reference_dtype == DType::kF32);
  CHECK(cast.tensors[0].dtype == DType::kBF16);
  // An integer dtype is never cast.
  write_safetensors(dir.sub("out2") / "model.safetensors",
                    {{"w", DType::kI16, {2, 3}, bf16}, f32("v", {2, 3}, values)});
  auto integer = compare(dir.sub("out2"), dir.sub("ref"), options);
  CHECK(integer.problems == std::vector<std::string>{"w: dtype I16, the reference has F32"});
}

TEST_CASE("sharded reference (written by execute_plan) against a single-file candidate") {
  TempDir dir("compare");
  // Inputs: 3 tensors of 8 floats each, in one raw file.
  std::vector<float> raw(24);
  for (std::size_t i = 0; i < raw.size(); ++i) raw[i] = static_cast<float>(i) * 0.5f;
  auto input = dir.sub("in") / "raw.bin";
  write_file(input, bytes_of(raw));
  std::vector<LogicalTensor> tensors;
  for (int t = 0; t < 3; ++t) {
    LogicalTensor tensor;
    tensor.name = "layer." + std::to_string(t) + ".weight";
    tensor.source_dtype = tensor.dtype = DType::kF32;
    tensor.shape = {2, 4};
    Fragment fragment;
    fragment.source.input = 0;
    fragment.source.storage_begin = static_cast<std::uint64_t>(t) * 32;
    fragment.source.storage_nbytes = 32;
    fragment.source.dtype = DType::kF32;
    fragment.source.shape = {2, 4};
    fragment.source.strides = {4, 1};
    fragment.offsets = {0, 0};
    tensor.fragments.push_back(fragment);
    tensors.push_back(tensor);
  }
  Plan plan;
  plan.inputs = {input};
  safetensors::OutputOptions sharding;
  sharding.max_shard_size = 40;  // one tensor per file
  REQUIRE(safetensors::plan_output(tensors, sharding, plan).ok());
  REQUIRE(plan.files.size() == 3);
  auto written = execute_plan(plan, dir.sub("ref"), {});
  REQUIRE_MESSAGE(written.ok(), written.error().message);

  std::vector<Tensor> single;
  for (int t = 0; t < 3; ++t)
    single.push_back(f32("layer." + std::to_string(t) + ".weight", {2, 4},
                         std::vector<float>(raw.begin() + t * 8, raw.begin() + t * 8 + 8)));
  write_safetensors(dir.sub("out") / "model.safetensors", single);
  CompareOptions tiny;
  tiny.buffer_bytes = 12;  // windows and reference reads of 3 floats
  auto report = compare(dir.sub("out"), dir.sub("ref"), tiny);
  CHECK_MESSAGE(report.ok(), problems_text(report));
  CHECK(report.tensors_compared == 3);
  // And the other way round: a sharded candidate against a single-file reference.
  auto reverse = compare(dir.sub("ref"), dir.sub("out"));
  CHECK_MESSAGE(reverse.ok(), problems_text(reverse));

  // The plan itself, streamed without writing (verl's test): against either model.
  ExecOptions exec;
  exec.buffer_bytes = 12;
  auto streamed = compare_plan(plan, dir.sub("out"), {}, exec);
  REQUIRE_MESSAGE(streamed.ok(), streamed.error().message);
  CHECK_MESSAGE(streamed->ok(), problems_text(*streamed));
  CHECK(streamed->tensors_compared == 3);
  CHECK(streamed->bytes_compared == 96);

  // A bf16 plan of the same sources matches an f32 reference cast to bf16, not the f32 one.
  Plan bf16_plan;
  bf16_plan.inputs = {input};
  for (auto& tensor : tensors) tensor.dtype = DType::kBF16;
  REQUIRE(safetensors::plan_output(tensors, {}, bf16_plan).ok());
  auto strict = compare_plan(bf16_plan, dir.sub("out"), {}, exec);
  REQUIRE(strict.ok());
  CHECK(strict->problems.size() == 3);
  CompareOptions cast;
  cast.cast_reference = true;
  auto cast_report = compare_plan(bf16_plan, dir.sub("out"), cast, exec);
  REQUIRE(cast_report.ok());
  CHECK_MESSAGE(cast_report->ok(), problems_text(*cast_report));

  single[2] = f32("layer.2.weight", {2, 4}, {8, 8.5f, 9, 9.5f, 10, 10.5f, 11, 99});
  write_safetensors(dir.sub("out") / "model.safetensors", single);
  auto changed = compare(dir.sub("out"), dir.sub("ref"), tiny);
  CHECK(changed.problems ==
        std::vector<std::string>{"layer.2.weight: 1 of 8 elements differ (first at 7), max abs "
                                 "diff 87.5, max rel diff 7.6087"});
}

TEST_CASE("a reference index that disagrees with its files, or a name twice, is a problem") {
  TempDir dir("compare");
  auto ref = dir.sub("ref");
  write_safetensors(ref / "model-00001-of-00002.safetensors", {f32("a", {1}, {1})});
  write_safetensors(ref / "model-00002-of-00002.safetensors",
                    {f32("b", {1}, {2}), f32("a", {1}, {1}), f32("c", {1}, {3})});
  write_file(ref / "model.safetensors.index.json",
             R"({"metadata":{"total_size":16},"weight_map":{)"
             R"("a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",)"
             R"("x":"model-00002-of-00002.safetensors"}})");
  write_safetensors(dir.sub("out") / "model.safetensors",
                    {f32("a", {1}, {1}), f32("b", {1}, {2}), f32("c", {1}, {3})});
  auto report = compare(dir.sub("out"), ref);
  CHECK(report.problems ==
        std::vector<std::string>{
            "reference: a is in more than one file",
            "reference: the index puts b in model-00001-of-00002.safetensors, which does not "
            "hold it",
            "reference: the index puts x in model-00002-of-00002.safetensors, which does not "
            "hold it",
            "reference: model-00002-of-00002.safetensors holds c, which the index does not name"});
  CHECK(report.tensors_compared == 3);
}

TEST_CASE("errors: what cannot be read at all") {
  TempDir dir("compare");
  auto empty = dir.sub("empty");
  auto missing = compare_dirs(empty, empty, {});
  REQUIRE(!missing.ok());
  CHECK(missing.error().message.find("neither model.safetensors nor") != std::string::npos);
  auto nowhere = compare_dirs(dir.sub("empty") / "nope", empty, {});
  REQUIRE(!nowhere.ok());
  CHECK(nowhere.error().kind == ErrorKind::kUsage);
  write_file(dir.sub("bad") / "model.safetensors", "not a safetensors file");
  write_safetensors(dir.sub("good") / "model.safetensors", base_model());
  auto bad = compare_dirs(dir.sub("good"), dir.sub("bad"), {});
  REQUIRE(!bad.ok());
  CHECK(bad.error().message.rfind("reference: ", 0) == 0);
}

TEST_CASE("the stream core: windows split anywhere, errors and short streams") {
  TempDir dir("compare");
  write_safetensors(dir.sub("ref") / "model.safetensors", base_model());
  auto model = base_model();
  std::vector<CandidateTensor> declared;
  for (const auto& t : model) declared.push_back({t.name, t.dtype, t.shape});

  // Windows of 3 bytes split every float and int64; one value changed in the last tensor.
  model[3].bytes[20] = std::byte{0x01};
  auto odd_windows = [&](const CandidateSink& sink) -> Status {
    for (const auto& t : model)
      for (std::size_t at = 0; at < t.bytes.size(); at += 3) {
        std::size_t n = std::min<std::size_t>(3, t.bytes.size() - at);
        CKPT_TRY(sink(t.name, at, std::span<const std::byte>(t.bytes.data() + at, n)));
      }
    return {};
  };
  CompareOptions options;
  options.buffer_bytes = 4;
  auto report = compare_stream(declared, odd_windows, dir.sub("ref"), options);
  REQUIRE_MESSAGE(report.ok(), report.error().message);
  CHECK(report->tensors_compared == 4);
  REQUIRE(report->problems.size() == 1);
  CHECK(report->problems[0].rfind("lm_head.weight: 1 of 6 elements differ (first at 5)", 0) == 0);

  // A window for an undeclared tensor, or out of order: errors.
  auto undeclared = compare_stream(
      declared,
      [&](const CandidateSink& sink) { return sink("nope", 0, std::span<const std::byte>()); },
      dir.sub("ref"), {});
  REQUIRE(!undeclared.ok());
  CHECK(undeclared.error().message.find("undeclared tensor nope") != std::string::npos);
  auto out_of_order = compare_stream(
      declared,
      [&](const CandidateSink& sink) {
        return sink(model[0].name, 4, std::span<const std::byte>(model[0].bytes.data(), 4));
      },
      dir.sub("ref"), {});
  REQUIRE(!out_of_order.ok());

  // A source error is returned as it is.
  auto failing = compare_stream(
      declared, [&](const CandidateSink&) -> Status { return io_error("disk on fire"); },
      dir.sub("ref"), {});
  REQUIRE(!failing.ok());
  CHECK(failing.error().message == "disk on fire");

  // A stream that stops early leaves tensors short: a problem per tensor.
  auto short_stream = compare_stream(
      declared,
      [&](const CandidateSink& sink) {
        return sink(model[0].name, 0, std::span<const std::byte>(model[0].bytes.data(), 8));
      },
      dir.sub("ref"), {});
  REQUIRE(short_stream.ok());
  CHECK(short_stream->problems.size() == 4);
  CHECK(short_stream->problems[0] ==
        "model.embed.weight: the candidate produced 8 of its 24 bytes");
}
