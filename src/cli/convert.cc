// `ckptstream convert SRC... --target_dir OUT`: torch.save files (plain, legacy, Hugging Face's
// sharded pytorch_model-*.bin) to safetensors, with side files and a checksum manifest.
#include <cstdio>
#include <set>

#include "cli/commands.h"
#include "cli/progress.h"
#include "exec/executor.h"
#include "exec/manifest.h"
#include "formats/torch_sources.h"
#include "safetensors/safetensors.h"

namespace ckptstream::cli {
namespace fs = std::filesystem;
namespace {

bool is_model_output_name(const std::string& name) {
  return name == safetensors::kIndexFileName || name == kManifestFileName ||
         (name.rfind("model", 0) == 0 && name.size() > 12 &&
          name.compare(name.size() - 12, 12, ".safetensors") == 0);
}

// Model files already in the target: replacing them must be asked for, and the ones the new
// model does not overwrite are removed afterwards so no stale shard lingers.
std::vector<fs::path> existing_model_files(const fs::path& dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_regular_file() && is_model_output_name(entry.path().filename().string()))
      found.push_back(entry.path());
  return found;
}

// Creates the target directory if needed; removes it again on failure if we created it.
class TargetDir {
 public:
  static Result<TargetDir> prepare(const fs::path& dir) {
    std::error_code ec;
    if (fs::exists(dir, ec)) {
      if (!fs::is_directory(dir))
        return usage_error(dir.string() + ": exists and is not a directory");
      return TargetDir(dir, false);
    }
    fs::create_directories(dir, ec);
    if (ec) return io_error(dir.string() + ": cannot create: " + ec.message());
    return TargetDir(dir, true);
  }
  void keep() { created_ = false; }
  ~TargetDir() {
    std::error_code ec;
    if (created_ && fs::is_empty(dir_, ec)) fs::remove(dir_, ec);
  }
  TargetDir(TargetDir&& other) noexcept
      : dir_(std::move(other.dir_)), created_(std::exchange(other.created_, false)) {}

 private:
  TargetDir(fs::path dir, bool created) : dir_(std::move(dir)), created_(created) {}
  fs::path dir_;
  bool created_;
};

Result<Plan> plan_convert(const ConvertArgs& args, TorchConversion& conversion,
                          TorchSourceSet& sources) {
  CKPT_ASSIGN_OR_RETURN(sources, find_torch_sources(args.sources));
  CKPT_ASSIGN_OR_RETURN(auto choice, parse_dtype_choice(args.dtype));
  CKPT_ASSIGN_OR_RETURN(auto float_dtype, resolve_float_dtype(choice, sources.config_json));
  CKPT_ASSIGN_OR_RETURN(auto max_shard, safetensors::parse_size(args.max_shard_size));
  CKPT_ASSIGN_OR_RETURN(conversion, plan_torch_conversion(sources, float_dtype));
  if (conversion.tensors.empty())
    return invalid_input("no tensor found in " + sources.files.front().string());
  Plan plan;
  plan.inputs = conversion.inputs;
  plan.side_files = sources.side_files;
  CKPT_TRY(safetensors::plan_output(conversion.tensors, {max_shard}, plan));
  return plan;
}

}  // namespace

void add_convert(CLI::App& app, ConvertArgs& args) {
  auto* cmd = app.add_subcommand(
      "convert", "Convert torch.save files (.pt/.bin, HF sharded .bin) to safetensors");
  cmd->add_option("sources", args.sources,
                  "torch.save files, a *.bin.index.json, or directories holding them")
      ->required();
  cmd->add_option("--target_dir,--target-dir,-o", args.target_dir, "output directory")->required();
  cmd->add_option("--dtype", args.dtype,
                  "auto (config.json's torch_dtype, else keep), keep, bf16, fp16, fp32; "
                  "only floating-point tensors are cast")
      ->capture_default_str();
  cmd->add_option("--max-shard-size,--max_shard_size", args.max_shard_size,
                  "largest output file: 5GB (decimal units), 2GiB (binary), or bytes")
      ->capture_default_str();
  cmd->add_flag("--overwrite", args.overwrite, "replace a model already in the target directory");
  cmd->add_flag("--quiet,-q", args.quiet, "no progress or summary");
}

int run_convert(const ConvertArgs& args) {
  TorchSourceSet sources;
  TorchConversion conversion;
  auto plan = plan_convert(args, conversion, sources);
  if (!plan.ok()) return report_error(plan.error());

  auto target = TargetDir::prepare(args.target_dir);
  if (!target.ok()) return report_error(target.error());
  auto existing = existing_model_files(args.target_dir);
  if (!existing.empty() && !args.overwrite)
    return report_error(usage_error(args.target_dir.string() + " already holds a model (" +
                                    existing.front().filename().string() +
                                    "); pass --overwrite to replace it"));

  ProgressBar bar("convert", args.quiet);
  ExecOptions options;
  options.on_progress = [&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };
  auto manifest = execute_plan(*plan, args.target_dir, options);
  bar.finish();
  if (!manifest.ok()) return report_error(manifest.error());
  target->keep();

  std::set<std::string> written{std::string(kManifestFileName)};
  for (const auto& file : plan->files) written.insert(file.name);
  if (!plan->index_json.empty()) written.insert(std::string(safetensors::kIndexFileName));
  for (const auto& stale : existing) {
    std::error_code ec;
    if (!written.count(stale.filename().string())) fs::remove(stale, ec);
  }

  if (!args.quiet) {
    for (const auto& note : sources.notes) std::fprintf(stderr, "note: %s\n", note.c_str());
    for (const auto& alias : conversion.dropped_aliases)
      std::fprintf(stderr, "note: not written: %s\n", alias.c_str());
    std::size_t tensors = 0;
    for (const auto& file : plan->files) tensors += file.tensors.size();
    std::printf("wrote %zu tensors (%s) in %zu file%s to %s\n", tensors,
                human_bytes(plan->total_size).c_str(), plan->files.size(),
                plan->files.size() == 1 ? "" : "s", args.target_dir.c_str());
  }
  return kExitOk;
}

}  // namespace ckptstream::cli
