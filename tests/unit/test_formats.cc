#include <sys/stat.h>

#include <doctest/doctest.h>

#include "temp_dir.h"

#include <filesystem>
#include <fstream>

#include "formats/detect.h"
#include "formats/hf_config.h"
#include "formats/torch_sources.h"

using namespace ckptstream;
namespace fs = std::filesystem;

namespace {
using testing::TempDir;
}  // namespace

TEST_CASE("side files: config, tokenizer, templates and remote code named in auto_map") {
  TempDir dir("side");
  dir.write("config.json",
            R"({"auto_map": {"AutoConfig": "configuration_x.XConfig",
                "AutoModelForCausalLM": ["modeling_x.XModel", null]}, "torch_dtype": "bfloat16"})");
  dir.write("configuration_x.py", "");
  dir.write("modeling_x.py", "");
  dir.write("unrelated.py", "");
  dir.write("tokenizer.json", "{}");
  dir.write("tokenizer_config.json", "{}");
  dir.write("chat_template.jinja", "");
  dir.write("generation_config.json", "{}");
  dir.write("notes.txt", "");
  std::vector<std::string> names;
  auto found = find_side_files(dir.path);
  REQUIRE_MESSAGE(found.ok(), found.error().message);
  for (const auto& side : *found) names.push_back(side.name);
  CHECK(names == std::vector<std::string>{"chat_template.jinja", "config.json",
                                          "configuration_x.py", "generation_config.json",
                                          "modeling_x.py", "tokenizer.json",
                                          "tokenizer_config.json"});
}

TEST_CASE("a side file that is no regular file is an error naming it, never a hang") {
  SUBCASE("a FIFO tokenizer") {
    TempDir dir("side-fifo");
    dir.write("config.json", "{}");
    REQUIRE(::mkfifo((dir.path / "tokenizer.json").c_str(), 0644) == 0);
    auto found = find_side_files(dir.path);
    REQUIRE(!found.ok());
    CHECK(found.error().message.find("tokenizer.json: not a regular file (a FIFO)") !=
          std::string::npos);
  }
  SUBCASE("a config.json that is a directory") {
    TempDir dir("side-dir");
    std::filesystem::create_directories(dir.path / "config.json");
    auto found = find_side_files(dir.path);
    REQUIRE(!found.ok());
    CHECK(found.error().message.find("config.json: not a regular file (a directory)") !=
          std::string::npos);
  }
  SUBCASE("other directories named like side files are not side files") {
    TempDir dir("side-subdir");
    std::filesystem::create_directories(dir.path / "tokenizer");
    auto found = find_side_files(dir.path);
    REQUIRE_MESSAGE(found.ok(), found.error().message);
    CHECK(found->empty());
  }
}

TEST_CASE(
    "sources: a directory with an HF index gives its shards in order; trainer state is skipped") {
  TempDir dir("sources");
  dir.write("pytorch_model-00002-of-00002.bin", "x");
  dir.write("pytorch_model-00001-of-00002.bin", "x");
  dir.write("optimizer.pt", "x");
  dir.write("pytorch_model.bin.index.json",
            R"({"metadata": {"total_size": 8}, "weight_map": {
                 "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin",
                 "c": "pytorch_model-00001-of-00002.bin"}})");
  auto set = find_torch_sources({dir.path});
  REQUIRE(set.ok());
  REQUIRE(set->files.size() == 2);
  CHECK(set->files[0].filename() == "pytorch_model-00001-of-00002.bin");
  CHECK(set->files[1].filename() == "pytorch_model-00002-of-00002.bin");

  fs::remove(dir.path / "pytorch_model.bin.index.json");
  set = find_torch_sources({dir.path});
  REQUIRE(set.ok());
  CHECK(set->files.size() == 2);  // optimizer.pt is not a model file

  auto missing = find_torch_sources({dir.path / "nope.pt"});
  REQUIRE(!missing.ok());
  CHECK(missing.error().message.find("nope.pt: no such file") != std::string::npos);

  dir.write("broken.bin.index.json", R"({"weight_map": {"a": "../../etc/passwd"}})");
  auto escape = find_torch_sources({dir.path / "broken.bin.index.json"});
  REQUIRE(!escape.ok());
  CHECK(escape.error().message.find("outside its directory") != std::string::npos);
}

TEST_CASE("file kinds are detected from the first bytes") {
  TempDir dir("detect");
  CHECK(detect_file_kind(dir.write("z", std::string("PK\x03\x04rest", 8))).value() ==
        FileKind::kTorchZip);
  CHECK(detect_file_kind(dir.write("l", std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20"
                                                    "\x6a\xa8\x50\x19\x2e",
                                                    15)))
            .value() == FileKind::kTorchLegacy);
  std::string st("\x08\0\0\0\0\0\0\0{}      ", 16);
  CHECK(detect_file_kind(dir.write("s", st)).value() == FileKind::kSafetensors);
  CHECK(detect_file_kind(dir.write("o", "hello world")).value() == FileKind::kOther);
}

TEST_CASE("config_text_without: one top-level key and its value out, every other byte kept") {
  const std::string middle =
      "{\n  \"a\": 1,\n  \"quantization_config\": {\"fmt\": \"e4m3\", \"s\": \"}{,\\\"\", "
      "\"weight_block_size\": [128, 128]},\n  \"z\": [1, {\"quantization_config\": 2}]\n}\n";
  auto out = config_text_without(middle, "quantization_config");
  REQUIRE(out.ok());
  CHECK(*out == "{\n  \"a\": 1,\n  \"z\": [1, {\"quantization_config\": 2}]\n}\n");
  const std::string last = "{\"a\": \"x\", \"quantization_config\": {\"b\": [1, 2]}}";
  auto trimmed = config_text_without(last, "quantization_config");
  REQUIRE(trimmed.ok());
  CHECK(*trimmed == "{\"a\": \"x\"}");
  auto only = config_text_without("{\"quantization_config\": null}", "quantization_config");
  REQUIRE(only.ok());
  CHECK(*only == "{}");
  // Absent (or only nested deeper): the text as it was.
  CHECK(*config_text_without(last, "nothing") == last);
  CHECK(*config_text_without("{\"z\": {\"k\": 1}}", "k") == "{\"z\": {\"k\": 1}}");
  CHECK_FALSE(config_text_without("[1, 2]", "k").ok());
}
