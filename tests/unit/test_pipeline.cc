// The orchestration layer's rules (pipeline/): the output dtype, from the flag and the one
// config.json reader.
#include <doctest/doctest.h>

#include <optional>
#include <string>

#include "formats/hf_config.h"
#include "pipeline/output_rules.h"
#include "temp_dir.h"

using namespace ckptstream;
using ckptstream::testing::TempDir;

TEST_CASE("--dtype auto follows config.json's torch_dtype or dtype") {
  TempDir dir("dtype");
  auto config = [&](const char* name, const char* json) {
    return std::optional<HfConfig>(read_hf_config(dir.write(name, json)).value());
  };
  auto v4 = config("v4.json", R"({"torch_dtype": "bfloat16"})");
  auto v5 = config("v5.json", R"({"dtype": "float16"})");
  auto none = config("none.json", R"({"hidden_size": 8})");
  auto bad = config("bad.json", R"({"torch_dtype": "int8"})");
  // Both keys (transformers 4.56 to 4.x wrote both): v5's dtype wins, as transformers reads it.
  auto both = config("both.json", R"({"torch_dtype": "float32", "dtype": "bfloat16"})");
  CHECK(resolve_float_dtype(DTypeChoice::kAuto, both).value() == DType::kBF16);
  auto choice = parse_dtype_choice("auto");
  REQUIRE(choice.ok());
  CHECK(resolve_float_dtype(*choice, v4).value() == DType::kBF16);
  CHECK(resolve_float_dtype(*choice, v5).value() == DType::kF16);
  CHECK(!resolve_float_dtype(*choice, none).value().has_value());
  CHECK(!resolve_float_dtype(*choice, std::nullopt).value().has_value());
  auto refused = resolve_float_dtype(*choice, bad);
  REQUIRE(!refused.ok());
  CHECK(refused.error().message.find("bad.json: torch_dtype 'int8' is not a floating-point") !=
        std::string::npos);
  CHECK(resolve_float_dtype(parse_dtype_choice("fp32").value(), v4).value() == DType::kF32);
  CHECK(!resolve_float_dtype(parse_dtype_choice("keep").value(), v4).value().has_value());
  auto wrong = parse_dtype_choice("int4");
  REQUIRE(!wrong.ok());
  CHECK(wrong.error().kind == ErrorKind::kUsage);
}

TEST_CASE("tie_word_embeddings is read from config.json") {
  TempDir dir("tie");
  CHECK(read_hf_config(dir.write("a.json", R"({"tie_word_embeddings": true})"))
            .value()
            .tie_word_embeddings.value_or(false));
  CHECK(!read_hf_config(dir.write("b.json", R"({})")).value().tie_word_embeddings);
  CHECK(!read_hf_config(dir.write("c.json", "not json")).ok());
}
