#include "formats/megatron_layout.h"

#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <set>
#include <system_error>
#include <tuple>

#include "io/input_file.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kTracker = "latest_checkpointed_iteration.txt";

bool present(const fs::path& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

bool is_dir(const fs::path& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

std::string iteration_dir_name(std::int64_t iteration) {
  char name[32];
  std::snprintf(name, sizeof name, "iter_%07lld", static_cast<long long>(iteration));
  return name;
}

// "50" or "release" (whitespace around it ignored), as Megatron-LM's read_metadata takes it.
Result<std::string> read_tracker(const fs::path& path) {
  CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(path, 4096));
  auto first = text.find_first_not_of(" \t\r\n");
  auto last = text.find_last_not_of(" \t\r\n");
  std::string value = first == std::string::npos ? "" : text.substr(first, last - first + 1);
  if (value == "release") return std::string("release");
  std::int64_t iteration = -1;
  auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), iteration);
  if (value.empty() || error != std::errc() || end != value.data() + value.size() || iteration < 0)
    return invalid_input(path.string() + ": holds '" + value +
                         "', neither an iteration number nor 'release'");
  return iteration_dir_name(iteration);
}

std::optional<std::int64_t> iteration_of(const fs::path& dir) {
  std::string name = dir.filename().string();
  if (name == "release") return 0;
  if (name.rfind("iter_", 0) != 0) return std::nullopt;
  std::int64_t iteration = -1;
  auto [end, error] = std::from_chars(name.data() + 5, name.data() + name.size(), iteration);
  if (error != std::errc() || end != name.data() + name.size()) return std::nullopt;
  return iteration;
}

bool has_rank_dirs(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (parse_mp_rank_name(entry.path().filename().string())) return true;
  return false;
}

// The format of the files in `dir`; nullopt when they are no Megatron checkpoint.
Result<std::optional<MegatronFormat>> format_of(const fs::path& dir) {
  fs::path metadata = dir / "metadata.json";
  CKPT_ASSIGN_OR_RETURN(bool has_metadata, regular_file_exists(metadata));
  if (has_metadata) {
    CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(metadata, 1u << 20));
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    std::string_view backend;
    if (parser.parse(text).get(doc) || doc["sharded_backend"].get(backend))
      return invalid_input(metadata.string() + ": not a Megatron checkpoint's metadata.json " +
                           "(no \"sharded_backend\")");
    if (backend == "torch_dist") return std::optional<MegatronFormat>(MegatronFormat::kTorchDist);
    return unsupported(metadata.string() + ": sharded_backend '" + std::string(backend) +
                       "' is not supported (torch_dist is; zarr was removed from megatron-core)");
  }
  if (has_rank_dirs(dir)) return std::optional<MegatronFormat>(MegatronFormat::kLegacy);
  return std::optional<MegatronFormat>();
}

// The iteration directory a save directory's tracker (or `iteration`) names.
Result<std::optional<fs::path>> iteration_dir(const fs::path& dir,
                                              std::optional<std::int64_t> iteration,
                                              std::vector<std::string>& notes) {
  if (iteration) {
    fs::path named = dir / iteration_dir_name(*iteration);
    if (!is_dir(named))
      return invalid_input(named.string() + " is missing (--iteration " +
                           std::to_string(*iteration) + ")");
    notes.push_back("iteration " + std::to_string(*iteration) + " (--iteration)");
    return std::optional<fs::path>(named);
  }
  CKPT_ASSIGN_OR_RETURN(bool tracked, regular_file_exists(dir / kTracker));
  if (!tracked) return std::optional<fs::path>();
  CKPT_ASSIGN_OR_RETURN(std::string name, read_tracker(dir / kTracker));
  fs::path named = dir / name;
  if (!is_dir(named))
    return invalid_input((dir / kTracker).string() + " names " + name + ", which is missing");
  notes.push_back(std::string(kTracker) + " names " + name);
  return std::optional<fs::path>(named);
}

}  // namespace

std::optional<std::vector<std::int64_t>> parse_mp_rank_name(std::string_view name) {
  constexpr std::string_view kPrefix = "mp_rank_";
  if (name.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  name.remove_prefix(kPrefix.size());
  std::vector<std::int64_t> numbers;
  while (true) {
    std::size_t n = 0;
    while (n < name.size() && name[n] >= '0' && name[n] <= '9') ++n;
    if (n == 0 || n > 6) return std::nullopt;
    std::int64_t value = 0;
    std::from_chars(name.data(), name.data() + n, value);
    numbers.push_back(value);
    name.remove_prefix(n);
    if (name.empty()) break;
    if (name.front() != '_' || numbers.size() == 3) return std::nullopt;
    name.remove_prefix(1);
  }
  return numbers;
}

Result<std::optional<MegatronLayout>> find_megatron_checkpoint(
    const fs::path& dir, std::optional<std::int64_t> iteration) {
  MegatronLayout layout;
  CKPT_ASSIGN_OR_RETURN(auto named, iteration_dir(dir, iteration, layout.notes));
  fs::path candidate = named ? *named : dir;
  if (!named) {
    // verl (actor/dist_ckpt, model/dist_ckpt) and NeMo 2 (weights/ beside context/).
    for (const fs::path& inner : {dir / "dist_ckpt", dir / "model" / "dist_ckpt"})
      if (present(inner / "metadata.json")) {
        candidate = inner;
        layout.notes.push_back("verl layout: the checkpoint is in " + inner.string());
        break;
      }
    if (candidate == dir && present(dir / "weights" / "metadata.json") && is_dir(dir / "context")) {
      candidate = dir / "weights";
      layout.keys_under_module = true;
      layout.notes.push_back("NeMo 2 layout: weights/ (model keys under 'module.')");
    }
  }
  CKPT_ASSIGN_OR_RETURN(auto format, format_of(candidate));
  if (!format) {
    if (named)
      return invalid_input(candidate.string() +
                           " holds no Megatron checkpoint (no metadata.json, "
                           "no mp_rank_* directories)");
    return std::optional<MegatronLayout>();
  }
  layout.format = *format;
  layout.checkpoint_dir = candidate;
  layout.iteration = iteration_of(candidate);
  if (present(candidate / "run_config.yaml"))
    layout.notes.push_back("Megatron-Bridge layout: run_config.yaml beside the checkpoint");
  for (const fs::path& hf : {candidate.parent_path() / "huggingface", dir / "huggingface"})
    if (present(hf / "config.json")) {
      layout.hf_dir = hf;
      // verl saves the Hugging Face weights there too when its checkpoint contents include
      // hf_model: say so, the merge may be unneeded.
      if (present(hf / "model.safetensors") || present(hf / "model.safetensors.index.json"))
        layout.notes.push_back(hf.string() +
                               " already holds Hugging Face weights (verl saved hf_model)");
      break;
    }
  return std::optional<MegatronLayout>(std::move(layout));
}

Result<std::vector<MegatronRankDir>> megatron_rank_dirs(const fs::path& checkpoint_dir,
                                                        std::int64_t tp_size, std::int64_t pp_size,
                                                        std::int64_t ep_size) {
  if (tp_size < 1 || pp_size < 1 || ep_size < 1)
    return invalid_input(checkpoint_dir.string() + ": parallel sizes TP " +
                         std::to_string(tp_size) + ", PP " + std::to_string(pp_size) + ", EP " +
                         std::to_string(ep_size) + " from args are not positive");
  std::vector<MegatronRankDir> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(checkpoint_dir, ec)) {
    std::string name = entry.path().filename().string();
    auto numbers = parse_mp_rank_name(name);
    if (!numbers) continue;
    MegatronRankDir rank{entry.path(), (*numbers)[0], 0, 0};
    if (numbers->size() == 3) {
      rank.pp = (*numbers)[1];
      rank.ep = (*numbers)[2];
    } else if (numbers->size() == 2) {
      if (pp_size > 1 && ep_size > 1)
        return invalid_input(entry.path().string() + ": two numbers, but args say PP " +
                             std::to_string(pp_size) + " and EP " + std::to_string(ep_size) +
                             " (mp_rank_TT_PPP_EEE expected)");
      if (pp_size == 1 && ep_size == 1)
        return invalid_input(entry.path().string() + ": two numbers, but args say PP 1 and EP 1");
      (pp_size > 1 ? rank.pp : rank.ep) = (*numbers)[1];
    }
    if (rank.tp >= tp_size || rank.pp >= pp_size || rank.ep >= ep_size)
      return invalid_input(entry.path().string() + ": outside the run's TP " +
                           std::to_string(tp_size) + " x PP " + std::to_string(pp_size) + " x EP " +
                           std::to_string(ep_size) + " (from args)");
    out.push_back(std::move(rank));
  }
  if (ec) return io_error(checkpoint_dir.string() + ": cannot list: " + ec.message());
  std::sort(out.begin(), out.end(), [](const MegatronRankDir& a, const MegatronRankDir& b) {
    return std::tie(a.pp, a.ep, a.tp) < std::tie(b.pp, b.ep, b.tp);
  });
  for (std::size_t i = 1; i < out.size(); ++i)
    if (std::tie(out[i].pp, out[i].ep, out[i].tp) ==
        std::tie(out[i - 1].pp, out[i - 1].ep, out[i - 1].tp))
      return invalid_input(out[i - 1].dir.string() + " and " + out[i].dir.string() +
                           " are the same rank (TP " + std::to_string(out[i].tp) + ", PP " +
                           std::to_string(out[i].pp) + ", EP " + std::to_string(out[i].ep) + ")");
  std::set<std::int64_t> stages;
  for (const auto& rank : out) stages.insert(rank.pp);
  for (std::int64_t stage = 0; stage < pp_size; ++stage)
    if (!stages.count(stage))
      return invalid_input(checkpoint_dir.string() + ": no mp_rank_* directory of pipeline stage " +
                           std::to_string(stage) + " (PP " + std::to_string(pp_size) + ")");
  return out;
}

}  // namespace ckptstream
