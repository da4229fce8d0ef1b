// A Hugging Face safetensors model on disk, the one reader of it (verify, verify --reference,
// test, and next HF -> Megatron):
//   DIR/model.safetensors                       one file, or
//   DIR/model.safetensors.index.json            {"metadata": {"total_size": N},
//                                                "weight_map": {tensor: file, ...}}
//   DIR/model-0000i-of-0000N.safetensors        the files the index names
// or a single .safetensors file given by path. Every file's header is read (safetensors.h);
// tensors are matched by name across files. File names from an index that would leave the
// directory ("..", absolute paths) are refused, never opened.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "formats/source_model.h"
#include "io/input_file.h"
#include "safetensors/safetensors.h"

namespace ckptstream {

struct HfModelFile {
  std::string name;  // relative to HfSafetensorsModel::dir
  InputFile file;
  safetensors::FileHeader header;
};

struct HfSafetensorsModel {
  std::filesystem::path dir;
  std::optional<safetensors::Index> index;
  std::vector<std::string> file_names;  // the model's files: the index's, in order of first mention
  std::vector<HfModelFile> files;       // those opened and parsed, in that order
  // What is inconsistent: a tensor in two files, an index that disagrees with the headers (an
  // entry in a file that does not hold it, a tensor it does not name, a wrong total_size), an
  // unsafe file name in the index; with HfReadOptions::lenient also files or headers that cannot
  // be read.
  std::vector<std::string> problems;
};

struct HfReadOptions {
  // Unreadable files, headers and index become problems and the rest is read (verify reports
  // everything it finds); otherwise they are errors.
  bool lenient = false;
  // The index's total_size must be the tensors' bytes (true of what save_pretrained and ckptstream
  // write; a reference written elsewhere may count otherwise).
  bool check_total_size = false;
  // When the directory has neither an index nor model.safetensors: this file (a LoRA adapter's
  // adapter_model.safetensors), if set.
  std::optional<std::string> single_file;
};

// Errors: `path` neither a directory nor a file (usage); a directory without the model's files
// (mismatch with lenient, else invalid input); unreadable files without lenient.
Result<HfSafetensorsModel> read_hf_safetensors(const std::filesystem::path& path,
                                               const HfReadOptions& options = {});

// Is `dir` a Hugging Face safetensors model directory (model.safetensors or an index there)?
bool is_safetensors_model_dir(const std::filesystem::path& dir);

// The tensors of a Hugging Face directory (read_hf_safetensors) as a source to read from: one
// input per file, one fragment per tensor (its bytes where the header puts them).
Result<SourceTensors> read_hf_source_tensors(const std::filesystem::path& dir);

}  // namespace ckptstream
