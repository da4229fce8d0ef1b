// `ckptstream merge` (verl's `python -m verl.model_merger merge`), `plan --dry-run`, and the
// options they share with `test` and `verify --source`.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "cli/commands.h"
#include "cli/progress.h"
#include "plan/report.h"
#include "safetensors/safetensors.h"

extern char** environ;

namespace ckptstream::cli {
namespace fs = std::filesystem;
namespace {

// The Hugging Face command-line client `--hf_upload_path` uploads with ("" if none is
// installed): checked before any work, so a merge never runs only to fail at the upload.
std::string find_upload_client() {
  const char* path = std::getenv("PATH");
  if (!path) return "";
  for (const char* name : {"hf", "huggingface-cli"}) {
    std::string dirs = path;
    std::size_t start = 0;
    while (start <= dirs.size()) {
      auto end = dirs.find(':', start);
      if (end == std::string::npos) end = dirs.size();
      auto candidate = fs::path(dirs.substr(start, end - start)) / name;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
      start = end + 1;
    }
  }
  return "";
}

Status run_upload(const std::string& client, const std::string& repo, const fs::path& dir,
                  bool private_repo) {
  std::vector<std::string> words = {client, "upload",      repo,   dir.string(),
                                    ".",    "--repo-type", "model"};
  if (private_repo) words.emplace_back("--private");
  std::vector<char*> argv;
  for (auto& word : words) argv.push_back(word.data());
  argv.push_back(nullptr);
  // Our signals are blocked in every thread (signals.h); the client must get them as usual.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  int spawned = posix_spawn(&pid, client.c_str(), nullptr, &attributes, argv.data(), environ);
  posix_spawnattr_destroy(&attributes);
  if (spawned != 0) return io_error("cannot start " + client);
  int status = 0;
  if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return io_error(client + " upload " + repo + " failed (the model is in " + dir.string() + ")");
  return {};
}

void print_notes(const ConversionPlan& plan, bool quiet) {
  if (quiet) return;
  std::fprintf(stderr, "found: %s\n", plan.layout().c_str());
  for (const auto& note : plan.notes()) std::fprintf(stderr, "note: %s\n", note.c_str());
}

}  // namespace

void add_checkpoint_options(CLI::App& cmd, CheckpointArgs& args, bool local_dir_required) {
  cmd.add_option(
         "--backend", args.conversion.backend,
         "checkpoint layout: auto (detect), fsdp (verl), dcp (torch.distributed.checkpoint, "
         "RLinf), megatron (torch_dist or legacy mp_rank_*)")
      ->capture_default_str();
  auto* local_dir = cmd.add_option("--local_dir,--local-dir", args.local_dir,
                                   "the checkpoint directory (e.g. .../global_step_N/actor)");
  if (local_dir_required) local_dir->required();
  cmd.add_option("--dtype", args.conversion.dtype,
                 "auto (config.json's torch_dtype, else keep), keep, bf16, fp16, fp32")
      ->capture_default_str();
  cmd.add_option("--max-shard-size,--max_shard_size", args.max_shard_size,
                 "largest output file: 5GB (decimal units), 2GiB (binary), or bytes")
      ->capture_default_str();
  cmd.add_flag("--tie-word-embedding,--tie_word_embedding", args.conversion.tie_word_embedding,
               "do not write lm_head.weight (tied to the embedding), whatever config.json says");
  cmd.add_flag("--is-value-model,--is_value_model", args.conversion.value_model,
               "a critic / value / reward model: `test` skips lm_head.weight (as verl does); "
               "Megatron: the one-row output layer is written as score.weight");
  cmd.add_flag("--trust-remote-code,--trust_remote_code", args.trust_remote_code,
               "accepted for verl compatibility; nothing is executed either way");
  cmd.add_flag("--use_cpu_initialization,--use-cpu-initialization", args.use_cpu_initialization,
               "accepted for verl compatibility; ckptstream always runs on the CPU");
  cmd.add_flag("--keep-packed-experts,--keep_packed_experts,--packed-experts,--packed_experts",
               args.conversion.keep_packed_experts,
               "write MoE experts packed as transformers v5 holds them in memory");
  cmd.add_option("--lora", args.conversion.lora,
                 "LoRA checkpoints: fuse (W + alpha/r * B A into the weights) or adapter "
                 "(base model + a PEFT adapter in lora_adapter/)")
      ->check(CLI::IsMember({"fuse", "adapter"}))
      ->capture_default_str();
  cmd.add_option("--lora-alpha,--lora_alpha", args.conversion.lora_alpha,
                 "LoRA alpha, when no lora_train_meta.json / adapter_config.json says it");
  cmd.add_option("--lora-rank,--lora_rank", args.conversion.lora_rank, "LoRA rank r");
  cmd.add_flag("--use-rslora,--use_rslora", args.conversion.use_rslora,
               "rank-stabilised LoRA: alpha/sqrt(r)");
  cmd.add_option("--prefix", args.conversion.prefix,
                 "DCP: the app-state prefix of the model keys (e.g. model, app.model, "
                 "fsdp_checkpoint.model); detected when absent");
  cmd.add_option("--hf-config,--hf_config,--hf_model_path,--hf-model-path",
                 args.conversion.hf_config,
                 "directory with the model's config.json and tokenizer (RLinf: the base model; "
                 "older verl: --hf_model_path), when the checkpoint has none beside it");
  cmd.add_option("--vit_dir,--vit-dir", args.conversion.vit_dir,
                 "Megatron vision-language models: a Hugging Face model directory whose vision "
                 "tower is written when the checkpoint holds none (as verl's flag)");
  cmd.add_option("--iteration", args.conversion.iteration,
                 "Megatron: the iteration to read (iter_XXXXXXX), instead of the one "
                 "latest_checkpointed_iteration.txt names");
  cmd.add_option("--threads", args.conversion.threads,
                 "output files written (or hashed) at once, one thread each (0: one per core); "
                 "also DCP items located at once; from 2 on, verl FSDP rank files are "
                 "unpickled two at a time")
      ->capture_default_str();
  cmd.add_flag("--accept-renamed-rank-files,--accept_renamed_rank_files",
               args.conversion.accept_renamed_rank_files,
               "verl FSDP: read rank files whose recorded name (torch.save keeps the name a file "
               "was saved as) is another rank's, for files renamed on purpose");
  cmd.add_flag("--quiet,-q", args.quiet, "no progress or notes");
}

CLI::App* add_checkpoint_command(CLI::App& app, const std::string& name,
                                 const std::string& description, CheckpointArgs& args) {
  auto* cmd = app.add_subcommand(name, description);
  add_checkpoint_options(*cmd, args, true);
  return cmd;
}

Result<ConversionOptions> to_conversion_options(const CheckpointArgs& args) {
  ConversionOptions options = args.conversion;
  CKPT_ASSIGN_OR_RETURN(options.max_shard_size,
                        safetensors::parse_max_shard_size(args.max_shard_size));
  return options;
}

Result<ConversionPlan> plan_from_args(const CheckpointArgs& args, std::size_t sampled_headers) {
  if (args.local_dir.empty()) return usage_error("--local_dir is required");
  CKPT_ASSIGN_OR_RETURN(auto options, to_conversion_options(args));
  options.sampled_headers = sampled_headers;
  if (!args.quiet && args.trust_remote_code)
    std::fprintf(stderr, "note: --trust-remote-code has no effect: no code is ever run\n");
  if (!args.quiet && args.use_cpu_initialization)
    std::fprintf(stderr, "note: --use_cpu_initialization has no effect: no GPU is used\n");
  return plan_checkpoint(args.local_dir, options);
}

void add_merge(CLI::App& app, MergeArgs& args) {
  auto* cmd = add_checkpoint_command(
      app, "merge",
      "Merge a sharded training checkpoint (verl FSDP, DCP, RLinf) into a Hugging Face model",
      args.checkpoint);
  cmd->add_option("--target_dir,--target-dir,-o", args.target_dir, "output directory")->required();
  cmd->add_option("--hf_upload_path,--hf-upload-path", args.hf_upload_path,
                  "upload the result to this Hugging Face repo (needs the `hf` command)");
  cmd->add_flag("--private", args.private_repo, "make the uploaded repo private");
  cmd->add_flag("--overwrite", args.overwrite, "replace a model already in the target directory");
  add_dist_options(*cmd, args.dist);
}

int run_merge(const MergeArgs& args) {
  std::string upload_client;
  if (!args.hf_upload_path.empty()) {
    upload_client = find_upload_client();
    if (upload_client.empty())
      return report_error(
          usage_error("--hf_upload_path needs the Hugging Face command-line client (`hf` or "
                      "`huggingface-cli`) on PATH; none was found, so nothing was done"));
  }
  auto plan = plan_from_args(args.checkpoint);
  if (!plan.ok()) return report_error(plan.error());
  print_notes(*plan, args.checkpoint.quiet);

  ProgressBar bar("merge", args.checkpoint.quiet);
  WriteOptions options =
      write_options(args.dist, args.overwrite, args.checkpoint.quiet, "merge",
                    args.checkpoint.conversion.threads, args.checkpoint.conversion.interrupt, bar);
  auto complete = write_model(*plan, args.target_dir, options);
  bar.finish();
  if (!complete.ok()) return report_error(complete.error());
  if (!*complete) return kExitOk;  // another rank of a distributed run: rank 0 finishes
  if (!args.checkpoint.quiet)
    std::printf("wrote %zu tensors (%s) in %zu file%s to %s\n", plan->tensor_count(),
                human_bytes(plan->tensor_bytes()).c_str(), plan->file_count(),
                plan->file_count() == 1 ? "" : "s", args.target_dir.c_str());
  if (!upload_client.empty()) {
    auto uploaded =
        run_upload(upload_client, args.hf_upload_path, args.target_dir, args.private_repo);
    if (!uploaded.ok()) return report_error(uploaded.error());
  }
  return kExitOk;
}

void add_plan(CLI::App& app, PlanArgs& args) {
  auto* cmd = add_checkpoint_command(
      app, "plan",
      "Show what merge would do (tensors, sources, output files, bytes, memory); writes nothing",
      args.checkpoint);
  cmd->add_flag("--dry-run,--dry_run", args.dry_run, "accepted; plan never writes anything");
  cmd->add_flag("--json", args.json, "machine-readable plan");
  cmd->add_flag("--summary", args.summary, "omit each tensor's source fragments");
}

// Local headers `plan` reads per rank file (the first, the last and evenly spaced ones).
constexpr std::size_t kPlanSampledHeaders = 64;

void print_part(std::string_view part) {
  std::fwrite(part.data(), 1, part.size(), stdout);
}

int run_plan(const PlanArgs& args) {
  // Shown, not executed: the data offsets may be computed (ConversionOptions::sampled_headers).
  auto plan = plan_from_args(args.checkpoint, kPlanSampledHeaders);
  if (!plan.ok()) return report_error(plan.error());
  if (args.json) {
    plan->write_json(print_part, !args.summary);
  } else {
    print_notes(*plan, false);
    plan->write_text(print_part, !args.summary);
  }
  return kExitOk;
}

}  // namespace ckptstream::cli
