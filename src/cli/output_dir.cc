#include "cli/output_dir.h"

#include "exec/manifest.h"

namespace ckptstream::cli {
namespace fs = std::filesystem;
namespace {

bool is_model_output_name(const std::string& name) {
  auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return name == kIndexFileName || name == kManifestFileName ||
         (name.rfind("model", 0) == 0 && ends_with(".safetensors"));
}

std::vector<fs::path> existing_model_files(const fs::path& dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.is_regular_file() && is_model_output_name(entry.path().filename().string()))
      found.push_back(entry.path());
  return found;
}

}  // namespace

OutputDir::OutputDir(fs::path dir, bool created, std::vector<fs::path> existing)
    : dir_(std::move(dir)), created_(created), existing_(std::move(existing)) {}

OutputDir::OutputDir(OutputDir&& other) noexcept
    : dir_(std::move(other.dir_)),
      created_(std::exchange(other.created_, false)),
      existing_(std::move(other.existing_)) {}

OutputDir::~OutputDir() {
  std::error_code ec;
  if (created_ && fs::is_empty(dir_, ec)) fs::remove(dir_, ec);
}

Result<OutputDir> OutputDir::prepare(const fs::path& dir, bool overwrite) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir))
      return usage_error(dir.string() + ": exists and is not a directory");
    auto existing = existing_model_files(dir);
    if (!existing.empty() && !overwrite)
      return usage_error(dir.string() + " already holds a model (" +
                         existing.front().filename().string() +
                         "); pass --overwrite to replace it");
    return OutputDir(dir, false, std::move(existing));
  }
  fs::create_directories(dir, ec);
  if (ec) return io_error(dir.string() + ": cannot create: " + ec.message());
  return OutputDir(dir, true, {});
}

Result<OutputDir> OutputDir::prepare_shared(const fs::path& dir, bool overwrite) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    return io_error(dir.string() + ": cannot create: " + (ec ? ec.message() : "not a directory"));
  // Listed before looking for the markers: a rank writes a file only after creating them.
  auto existing = existing_model_files(dir);
  if (distributed_run_in_progress(dir) || existing.empty())
    return OutputDir(dir, false, std::move(existing));
  if (!overwrite)
    return usage_error(dir.string() + " already holds a model (" +
                       existing.front().filename().string() + "); pass --overwrite to replace it");
  fs::remove(dir / kManifestFileName, ec);
  fs::remove(dir / kIndexFileName, ec);
  return OutputDir(dir, false, std::move(existing));
}

Result<OutputDir> OutputDir::open_run(const fs::path& dir) {
  if (!distributed_run_in_progress(dir))
    return usage_error(dir.string() + " holds no distributed run to finalize (no " +
                       std::string(kMarkerDirName) + "/ markers; already finalized?)");
  return OutputDir(dir, false, existing_model_files(dir));
}

void OutputDir::remove_stale(const Plan& plan) {
  std::set<std::string> written{std::string(kManifestFileName)};
  for (const auto& file : plan.files) written.insert(file.name);
  if (!plan.index_json.empty()) written.insert(std::string(kIndexFileName));
  for (const auto& stale : existing_) {
    std::error_code ec;
    if (!written.count(stale.filename().string())) fs::remove(stale, ec);
  }
}

Result<Manifest> OutputDir::write(const Plan& plan, const ExecOptions& options) {
  CKPT_ASSIGN_OR_RETURN(auto manifest, execute_plan(plan, dir_, options));
  created_ = false;  // it holds a model now
  remove_stale(plan);
  std::error_code ec;
  if (distributed_run_in_progress(dir_)) fs::remove_all(dir_ / kMarkerDirName, ec);
  return manifest;
}

Result<RankReport> OutputDir::write_rank(const Plan& plan, const ExecOptions& options,
                                         unsigned rank, unsigned world_size) {
  return execute_rank(plan, dir_, options, rank, world_size);
}

Result<Manifest> OutputDir::finalize(const Plan& plan, const FinalizeOptions& options) {
  CKPT_ASSIGN_OR_RETURN(auto manifest, finalize_plan(plan, dir_, options));
  remove_stale(plan);
  return manifest;
}

}  // namespace ckptstream::cli
