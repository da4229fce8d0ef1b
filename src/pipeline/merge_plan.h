// The orchestration of a conversion, above the formats (which read checkpoints) and the mappings
// (which know model families): from a training checkpoint directory, or from plain torch files,
// to the plan of a Hugging Face model. It finds the checkpoint through the table of readers
// (formats/source_model.h), reads the model's config.json once, applies the model semantics
// (LoRA, tied embeddings, packed experts), chooses the output dtype and lays out the safetensors
// files. Shared by `merge`, `plan --dry-run`, `test`, `verify --source` and `convert`, so that
// they can never disagree.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/ckptstream.h"
#include "ckptstream/result.h"
#include "core/interrupt.h"
#include "formats/hf_config.h"
#include "formats/source_model.h"
#include "io/scratch_dir.h"
#include "pipeline/output_rules.h"
#include "plan/plan.h"
#include "safetensors/safetensors.h"

namespace ckptstream {

struct MergePlan {
  std::string layout;  // what was found, e.g. "verl FSDP, world size 4"
  Plan model;
  std::optional<Plan> adapter;  // --lora adapter: written to <target>/lora_adapter
  std::optional<std::filesystem::path> config_json;
  std::vector<std::string> notes;         // what was decided and why, for the user
  std::shared_ptr<ScratchDir> scratch;    // keeps decoded inputs alive as long as the plan
  std::vector<std::string> tensor_order;  // the model's tensors in state-dict order
};

// A training checkpoint directory (verl FSDP, DCP, RLinf: any reader of the table), with the
// public API's options (include/ckptstream/ckptstream.h).
Result<MergePlan> plan_merge(const std::filesystem::path& local_dir,
                             const ConversionOptions& options);

// Plain torch.save files (.pt/.bin/.pth, HF sharded *.bin + index, or directories of them:
// formats/torch_sources.h). With options.as_saved, a single checkpoint directory that a reader
// recognises is read as a training checkpoint instead (`convert --to torch` of a DCP or verl
// FSDP directory). Only dtype, max_shard_size, prefix, as_saved, threads and interrupt apply.
Result<MergePlan> plan_convert(const std::vector<std::filesystem::path>& sources,
                               const ConversionOptions& options);

// The plan of one torch.save file at `target` holding the tensors of `merge` in state-dict order
// (convert --to torch): a torch zip (torch/torch_writer.h) that the executor writes like any
// other output file (execute_to_file).
Result<Plan> plan_torch_save(const MergePlan& merge, const std::filesystem::path& target);

}  // namespace ckptstream
