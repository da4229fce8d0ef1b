// The inputs of `convert`: plain torch.save files (.pt/.pth/.bin), Hugging Face's sharded
// pytorch_model-0000i-of-0000N.bin with its index, or directories holding them; the side files
// that travel with a model (config, tokenizer, generation config, chat templates, remote code);
// and the mapping from their tensors to the logical tensors of the output.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/result.h"
#include "plan/plan.h"
#include "torch/torch_checkpoint.h"

namespace ckptstream {

struct TorchSourceSet {
  std::vector<std::filesystem::path> files;  // torch.save files, in state-dict order
  std::vector<SideFile> side_files;          // copied byte for byte next to the output
  std::optional<std::filesystem::path> config_json;
  std::vector<std::string> notes;  // what was found and skipped, for the user
};

// Resolves command-line sources: files are taken as given; a directory contributes the files of
// its *.bin.index.json (or *.pt.index.json) when there is one, else its *.pt/*.pth/*.bin files
// except trainer state (optimizer.pt, scheduler.pt, rng_state*.pth, training_args.bin, ...).
// Side files are looked up in the directory of the first source.
Result<TorchSourceSet> find_torch_sources(const std::vector<std::filesystem::path>& args);

// Names of the side files of a Hugging Face model directory (config, tokenizer, remote code
// named in config.json's auto_map), present in `dir`. One that is not a regular file (a FIFO, a
// config.json that is a directory) is an error naming it.
Result<std::vector<SideFile>> find_side_files(const std::filesystem::path& dir);

struct TorchConversion {
  std::vector<std::filesystem::path> inputs;  // Plan::inputs
  std::vector<LogicalTensor> tensors;         // state-dict order
  std::vector<std::string> dropped_aliases;  // "lm_head.weight (tied to model.embed_tokens.weight)"
};

// Reads every source's metadata and maps its tensors to output tensors, one fragment each.
// Tied aliases (two names, one storage, one view) are written once, as transformers does; other
// views of a shared storage become separate contiguous tensors. DTensor shards, conj/neg views
// and dtypes safetensors cannot hold are clear errors naming the file and tensor.
Result<TorchConversion> plan_torch_conversion(const TorchSourceSet& sources,
                                              std::optional<DType> float_dtype);

}  // namespace ckptstream
