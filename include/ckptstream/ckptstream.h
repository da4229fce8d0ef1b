// The ckptstream library: plan a conversion, execute it, verify an output. The command-line tool
// is a client of exactly this; a program can be too (find_package(ckptstream) + target
// ckptstream::ckptstream, see README § Library).
//
//   auto plan = ckptstream::plan_checkpoint("ckpt/global_step_100/actor", {});
//   if (!plan.ok()) return fail(plan.error().message);
//   auto done = ckptstream::write_model(*plan, "out/model", {});
//   auto report = ckptstream::verify_output("out/model", {});
//
// A plan is everything known before a byte moves (which tensors, from which bytes of which input
// files, into which output files); writing streams the bytes with a bounded memory window and
// commits the output directory atomically; verifying re-reads it against the checksums written
// with it. Errors are values (result.h): a message naming the file and what is wrong.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckptstream/dtype.h"
#include "ckptstream/result.h"

namespace ckptstream {

// A request to stop, set from another thread (a signal watcher): long steps look at it and return
// an error of kind kInterrupted, removing what they had created. Null: never.
using InterruptFlag = std::atomic<bool>;

// How to read a checkpoint and what model to make of it. Strings are spelled as the command line
// spells them.
struct ConversionOptions {
  std::string backend = "auto";                  // auto (detect), fsdp, dcp: a checkpoint reader
  std::string dtype = "auto";                    // auto (config.json's), keep, bf16, fp16, fp32
  std::uint64_t max_shard_size = 5'000'000'000;  // largest output file (huggingface_hub's split)
  bool tie_word_embedding = false;               // drop lm_head.weight whatever config.json says
  bool keep_packed_experts = false;  // MoE experts as transformers v5 packs them in memory
  std::string lora = "fuse";         // fuse (into the weights) or adapter (a PEFT adapter beside)
  std::optional<double> lora_alpha;
  std::optional<std::int64_t> lora_rank;
  bool use_rslora = false;
  std::optional<std::string> prefix;               // DCP: the app-state prefix of model keys
  std::optional<std::filesystem::path> hf_config;  // the model's config.json and tokenizer
  std::optional<std::int64_t> iteration;  // Megatron: the iteration to read (default: the latest)
  // Megatron: an output layer of one row is a value head, written as score.weight.
  bool value_model = false;
  // Megatron vision-language models: the Hugging Face model whose vision tower ("visual.*") is
  // written when the checkpoint holds none (verl's --vit_dir).
  std::optional<std::filesystem::path> vit_dir;
  // The state dict as saved (no model semantics, one output file): for write_torch_file.
  bool as_saved = false;
  unsigned threads = 0;  // files read at once (0: one per core)
  bool accept_renamed_rank_files = false;
  // Only for plans that are shown, never written: read this many local headers per torch file
  // and compute the other data offsets (0: read all).
  std::size_t sampled_headers = 0;
  const InterruptFlag* interrupt = nullptr;
};

// A planned conversion. Cheap to copy (shared, immutable).
class ConversionPlan {
 public:
  struct Impl;
  explicit ConversionPlan(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

  const std::string& layout() const;              // what was found ("verl FSDP checkpoint, ...")
  const std::vector<std::string>& notes() const;  // what was decided, and why
  std::size_t file_count() const;
  std::size_t tensor_count() const;
  std::uint64_t tensor_bytes() const;
  bool has_adapter() const;  // a LoRA adapter is written beside the model (lora = adapter)

  // The plan as `plan --dry-run` prints it (schema ckptstream.plan/1 for JSON), handed out one
  // output file at a time. `fragments`: each tensor's source fragments too.
  void write_text(const std::function<void(std::string_view)>& sink, bool fragments = true) const;
  void write_json(const std::function<void(std::string_view)>& sink, bool fragments = true) const;

  const Impl& impl() const { return *impl_; }

 private:
  std::shared_ptr<const Impl> impl_;
};

// A training checkpoint directory (verl FSDP, torch.distributed.checkpoint, RLinf) to a Hugging
// Face model.
Result<ConversionPlan> plan_checkpoint(const std::filesystem::path& dir,
                                       const ConversionOptions& options);
// Plain torch.save files (or directories of them, HF's sharded pytorch_model-*.bin) to a Hugging
// Face model; with options.as_saved, a single checkpoint directory is read as a training one.
Result<ConversionPlan> plan_torch_files(const std::vector<std::filesystem::path>& sources,
                                        const ConversionOptions& options);

// A Hugging Face model to a Megatron-Core checkpoint (convert --to megatron): the parallel layout
// to write it for, spelled as the command line spells it.
struct MegatronOptions {
  std::int64_t tp = 1, pp = 1, vpp = 1, ep = 1;
  std::int64_t etp = 0;                 // expert tensor parallel; 0: 1, megatron-core's default
  std::int64_t first_stage_layers = 0;  // uneven pipeline: layers of the first / last stage
  std::int64_t last_stage_layers = 0;
  std::string layer_spec = "te";       // te (Transformer Engine, GPU training) or local
  std::string format = "torch_dist";   // torch_dist or torch (legacy per-rank files)
  std::string layout = "megatron-lm";  // megatron-lm (tracker + release/) or flat
  std::int64_t vocab_divisor = 128;    // --make-vocab-size-divisible-by
  std::string dtype = "auto";          // auto (config.json's), keep, bf16, fp16, fp32
};
Result<ConversionPlan> plan_megatron_checkpoint(const std::filesystem::path& hf_dir,
                                                const MegatronOptions& options);

struct WriteOptions {
  bool overwrite = false;            // replace a model already in the target
  std::string owner = "ckptstream";  // what the target's lock file says of this run
  unsigned threads = 0;              // output files written at once (0: one per core)
  std::function<void(std::uint64_t done, std::uint64_t total)> on_progress;
  std::function<void(std::string_view note)> on_note;  // what was found and done, for people
  const InterruptFlag* interrupt = nullptr;
  // A distributed run: this process writes its share of the files; rank 0 completes the model
  // once every rank's files are there (waiting at most wait_timeout). unset: from the
  // launcher's environment (torchrun, mpirun, srun, PMI) unless ignore_environment.
  std::optional<unsigned> rank;
  std::optional<unsigned> world_size;
  bool ignore_environment = false;
  std::chrono::milliseconds wait_timeout = std::chrono::hours(2);
};

// Writes the model into `target_dir` (created if missing) and commits it atomically, with a
// manifest of checksums; the LoRA adapter, if any, into target_dir/lora_adapter. True when the
// model is complete in the target (false on ranks other than 0 of a distributed run).
Result<bool> write_model(const ConversionPlan& plan, const std::filesystem::path& target_dir,
                         const WriteOptions& options);
// Completes a distributed run whose rank 0 did not (waits at most options.wait_timeout).
Status finalize_model(const ConversionPlan& plan, const std::filesystem::path& target_dir,
                      const WriteOptions& options);
// Can write_torch_file write `target_file`: not a directory, and absent unless `overwrite`?
Status check_torch_target(const std::filesystem::path& target_file, bool overwrite);
// Writes one torch.save file (a plan made with as_saved), atomically; torch.load reads it.
Status write_torch_file(const ConversionPlan& plan, const std::filesystem::path& target_file,
                        const WriteOptions& options);

struct VerifyReport {
  std::size_t files = 0;
  std::size_t tensors = 0;
  std::uint64_t bytes = 0;
  std::size_t other_files = 0;        // side files, generated files and the index, checked
  std::vector<std::string> problems;  // empty when everything matched
  std::vector<std::string> notes;     // what could not be checked, and why
  bool ok() const { return problems.empty(); }
};

struct VerifyOptions {
  std::uint64_t buffer_bytes = 8ull << 20;
  std::function<void(std::uint64_t done, std::uint64_t total)> on_progress;
  const InterruptFlag* interrupt = nullptr;
};

// Re-reads a model written by write_model against its manifest: every file's header, every
// tensor's checksum, the side files and index; and what in the directory is not part of the
// model. Errors are for what prevents checking at all; differences are problems in the report.
Result<VerifyReport> verify_output(const std::filesystem::path& dir, const VerifyOptions& options);

// The differences between what `plan` would write (its checksums, recomputed from the sources
// without writing) and the manifest of the model in `dir`.
Result<std::vector<std::string>> compare_with_source(const ConversionPlan& plan,
                                                     const std::filesystem::path& dir,
                                                     const WriteOptions& options);

// Comparison with a reference Hugging Face model, tensor by tensor, as verl's `test` does: the
// name sets, each common tensor's shape and dtype, then its values, exactly (the default) or
// within |a - b| <= atol + rtol * |b| for float dtypes. The reference is a directory holding
// model.safetensors or shards named by its index (or one .safetensors file).
struct CompareOptions {
  double atol = 0;  // atol = rtol = 0: exact comparison
  double rtol = 0;
  // Names left out on both sides: fnmatch(3) patterns without flags ('*' also matches '.'), e.g.
  // "lm_head.weight" (tied embeddings, value models) or "*.rotary_emb.inv_freq".
  std::vector<std::string> skip;
  // Compare against the reference cast to the candidate's dtype (torch-exact rounding), as verl's
  // test loads the reference with torch_dtype=bfloat16. Float dtypes (F16/BF16/F32/F64) only;
  // other dtype differences stay problems.
  bool cast_reference = false;
  std::uint64_t buffer_bytes = 8ull << 20;  // per read buffer
  // Called with (candidate bytes compared so far, candidate bytes in all); may be empty.
  std::function<void(std::uint64_t, std::uint64_t)> on_progress;
};

struct TensorComparison {
  std::string name;
  DType dtype = DType::kF32;            // the candidate's
  DType reference_dtype = DType::kF32;  // differs only with cast_reference
  std::vector<std::int64_t> shape;
  std::uint64_t elements = 0;
  std::uint64_t mismatches = 0;      // elements that differ (bytes, or beyond the tolerance)
  std::uint64_t first_mismatch = 0;  // flat index of the first one, when mismatches > 0
  double max_abs_diff = 0;
  double max_rel_diff = 0;  // |a - b| / |b|; infinite where b = 0 != a
};

struct CompareReport {
  std::size_t tensors_compared = 0;       // tensors whose values were compared
  std::size_t tensors_skipped = 0;        // names matched by CompareOptions::skip (both sides)
  std::uint64_t bytes_compared = 0;       // candidate bytes whose values were compared
  std::vector<std::string> missing;       // names only in the reference
  std::vector<std::string> extra;         // names only in the candidate
  std::vector<TensorComparison> tensors;  // every tensor whose values were compared, in order
  std::optional<TensorComparison> worst;  // none when every difference is 0
  std::vector<std::string> problems;      // every difference found; empty when all matched
  bool ok() const { return problems.empty(); }
};

// A written model (directory, or one .safetensors file) against a reference.
Result<CompareReport> compare_dirs(const std::filesystem::path& candidate,
                                   const std::filesystem::path& reference,
                                   const CompareOptions& options);

// What `plan` would write (streamed, nothing written) against a reference (`test`).
Result<CompareReport> compare_plan(const ConversionPlan& plan,
                                   const std::filesystem::path& reference,
                                   const CompareOptions& options,
                                   const InterruptFlag* interrupt = nullptr);

// One line for people: "NAME: 3 of 6 elements differ (first at 2), max abs diff 0.5, max rel
// diff 1" or "NAME: equal (max abs diff 1e-07, max rel diff 2e-07)".
std::string describe(const TensorComparison& comparison);

}  // namespace ckptstream
