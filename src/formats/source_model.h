// The one interface between checkpoint formats and everything above them. A reader turns a
// checkpoint directory into a SourceModel: the input files and, in state-dict order, logical
// tensors whose fragments point into them (plan/plan.h); the orchestration (pipeline/) then
// applies the model's semantics and lays out the output. Readers are listed in one table
// (checkpoint_readers(), formats/readers.cc): a new format adds a reader there, and
// detection (`--backend auto`) asks each in turn, finding the checkpoint once.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/result.h"
#include "core/interrupt.h"
#include "plan/plan.h"

namespace ckptstream {

// Tensors read from a checkpoint: what every reader returns.
struct SourceTensors {
  std::vector<std::filesystem::path> inputs;  // Plan::inputs, referenced by the fragments
  std::vector<LogicalTensor> tensors;         // state-dict order; dtype == source_dtype
  std::vector<std::string> notes;             // what was found and decided, for the user
};

struct SourceModel {
  std::string layout;  // what was found, e.g. "verl FSDP checkpoint, world size 4"
  // What the tensors are called: Hugging Face names (a model's state dict), or megatron-core's,
  // which the orchestration names for Hugging Face with the family tables (mapping/megatron_hf.h).
  enum class Naming { kHuggingFace, kMegatron } naming = Naming::kHuggingFace;
  SourceTensors tensors;
  std::optional<std::filesystem::path> hf_dir;  // config.json, tokenizer, ... beside it
  std::vector<std::string> notes;               // how the layout was found, then the reader's
};

// How to read (the same for every format; a reader ignores what does not apply to it).
struct ReadOptions {
  unsigned threads = 0;  // files or items read at once (0: one per core)
  // Local headers of torch zip files read per file, the others' data offsets computed
  // (TorchReadOptions); 0: all. Only for plans that are shown, not executed.
  std::size_t sampled_headers = 0;
  std::optional<std::string> prefix;  // DCP: the app-state prefix of the model keys
  // The model's Hugging Face directory when given (--hf-config): a reader whose checkpoint does
  // not say what model it holds takes the hyperparameters from its config.json (hf_config.h).
  std::optional<std::filesystem::path> hf_config;
  std::optional<std::int64_t> iteration;     // Megatron: another iteration than the tracker's
  std::filesystem::path scratch_dir;         // where compressed items are decoded to
  bool accept_renamed_rank_files = false;    // verl FSDP (FsdpCheckpoint)
  const InterruptFlag* interrupt = nullptr;  // looked at between files and batches
};

struct CheckpointReader;

// A checkpoint a reader found in a directory, ready to be read; empty (no `read`) when the
// directory holds none of the reader's format.
struct FoundCheckpoint {
  const CheckpointReader* reader = nullptr;
  std::function<Result<SourceModel>(const ReadOptions&)> read;
  explicit operator bool() const { return static_cast<bool>(read); }
};

struct CheckpointReader {
  std::string_view name;       // its --backend value
  std::string_view looks_for;  // "verl FSDP model_world_size_W_rank_R.pt files": for messages
  // The Hugging Face config.json must be found (beside the checkpoint or --hf-config) to write
  // a model: the checkpoint alone does not say what model it is.
  bool needs_hf_config = false;
  // The checkpoint of this format in `dir`. When `dir` shows no sign of the format: an empty
  // one, or with `required` an error saying what is missing. When it shows signs but is broken
  // (a missing rank file): an error naming what is wrong.
  Result<FoundCheckpoint> (*find)(const std::filesystem::path& dir, bool required);
};

// Every reader, in the order `--backend auto` tries them.
std::span<const CheckpointReader> checkpoint_readers();

// The checkpoint in `dir` read by the reader named `backend`, or by the first whose find()
// recognises it when `backend` is "auto". Errors: an unknown backend (usage), a directory that
// cannot be listed, nothing recognised (naming what was looked for).
Result<FoundCheckpoint> find_checkpoint(const std::filesystem::path& dir, std::string_view backend);

// The checkpoint in `dir` of the first reader whose find() recognises it; empty when none does.
Result<FoundCheckpoint> detect_checkpoint(const std::filesystem::path& dir);

// "auto, fsdp or dcp": the --backend values, for help and messages.
std::string backend_names();

}  // namespace ckptstream
