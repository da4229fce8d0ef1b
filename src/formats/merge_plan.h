// From a training checkpoint directory to the plan of a Hugging Face model: detect the layout,
// read the shards' metadata into logical tensors, apply the model semantics (LoRA, tied
// embeddings, packed experts, output dtype), and lay out the safetensors files. Shared by
// `merge`, `plan --dry-run`, `test` and `verify --source`, so they can never disagree.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "core/interrupt.h"
#include "formats/torch_sources.h"
#include "io/file_lock.h"
#include "plan/plan.h"

namespace ckptstream {

enum class Backend { kAuto, kFsdp, kDcp };
Result<Backend> parse_backend(std::string_view text);

enum class LoraMode { kFuse, kAdapter };

struct MergeOptions {
  Backend backend = Backend::kAuto;
  DTypeChoice dtype = DTypeChoice::kAuto;
  std::uint64_t max_shard_size = 5'000'000'000;
  bool tie_word_embedding = false;  // drop lm_head.weight even if config.json does not say so
  bool keep_packed_experts = false;
  LoraMode lora = LoraMode::kFuse;
  std::optional<double> lora_alpha;
  std::optional<std::int64_t> lora_rank;
  bool use_rslora = false;
  std::optional<std::string> prefix;               // DCP: the app-state prefix of the model keys
  std::optional<std::filesystem::path> hf_config;  // config and side files, when not beside
  // The state dict as saved, for torch.save output: no LoRA fusing, tied-weight dropping or
  // expert unpacking, and no config needed.
  bool raw_state_dict = false;
  unsigned threads = 0;                    // rank files parsed at once (0: one per core)
  bool accept_renamed_rank_files = false;  // verl FSDP (FsdpCheckpoint)
  // Local headers of torch zip files read per file, the others' data offsets computed
  // (TorchReadOptions); 0: all. Only for plans that are shown, not executed.
  std::size_t sampled_headers = 0;
  // Checked between rank files and between batches of DCP items; may be null.
  const InterruptFlag* interrupt = nullptr;
};

// A directory for items that must be decoded before they can be streamed (zstd-compressed DCP
// items): `<tmp>/ckptstream-scratch-XXXXXX/`, locked (io/file_lock.h) by `<dir>.lock` beside it,
// and removed with the plan that reads from it. Making one first removes those whose lock is
// free: what runs killed before they could remove theirs left.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::optional<FileLock> lock_;
};

struct MergePlan {
  std::string layout;  // what was found, e.g. "verl FSDP, world size 4"
  Plan model;
  std::optional<Plan> adapter;  // --lora adapter: written to <target>/lora_adapter
  std::optional<std::filesystem::path> config_json;
  std::vector<std::string> notes;         // what was decided and why, for the user
  std::shared_ptr<ScratchDir> scratch;    // keeps decoded inputs alive as long as the plan
  std::vector<std::string> tensor_order;  // the model's tensors in state-dict order
};

Result<MergePlan> plan_merge(const std::filesystem::path& local_dir, const MergeOptions& options);

}  // namespace ckptstream
