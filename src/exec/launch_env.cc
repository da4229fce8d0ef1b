#include "exec/launch_env.h"

#include <charconv>

extern char** environ;

namespace ckptstream {
namespace {

// Slurm's special step ids (batch, extern, interactive, pending) are the top of uint32.
constexpr unsigned long long kFirstSpecialSlurmStep = 0xfffffff0ull;
constexpr unsigned kMaxWorldSize = 1u << 24;

const std::string* lookup(const Environment& env, std::string_view name) {
  auto it = env.find(name);
  return it == env.end() ? nullptr : &it->second;
}

std::optional<unsigned long long> parse_decimal(std::string_view text) {
  unsigned long long value = 0;
  if (text.empty()) return std::nullopt;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

Result<unsigned> parse_variable(const Environment& env, std::string_view name) {
  const std::string& text = *lookup(env, name);
  auto value = parse_decimal(text);
  if (!value || *value > kMaxWorldSize)
    return usage_error(std::string(name) + "=" + text + " is not a rank or world size");
  return static_cast<unsigned>(*value);
}

struct Detected {
  unsigned rank;
  std::optional<unsigned> world_size;
  std::string source;
};

// A launcher whose rank and world size are both plain variables.
Result<std::optional<Detected>> pair(const Environment& env, std::string_view launcher,
                                     std::string_view rank_name, std::string_view world_name,
                                     std::vector<std::string>& notes) {
  bool has_rank = lookup(env, rank_name) != nullptr;
  bool has_world = lookup(env, world_name) != nullptr;
  if (!has_rank && !has_world) return std::optional<Detected>();
  if (!has_rank || !has_world) {
    notes.push_back(std::string(has_rank ? rank_name : world_name) + " is set without " +
                    std::string(has_rank ? world_name : rank_name) + ": ignored");
    return std::optional<Detected>();
  }
  CKPT_ASSIGN_OR_RETURN(unsigned rank, parse_variable(env, rank_name));
  CKPT_ASSIGN_OR_RETURN(unsigned world, parse_variable(env, world_name));
  return std::optional<Detected>(Detected{rank, world,
                                          std::string(launcher) + " (" + std::string(rank_name) +
                                              ", " + std::string(world_name) + ")"});
}

// PMIx puts the rank in the environment but not the size (PMIx_Get(PMIX_JOB_SIZE) has it).
Result<std::optional<Detected>> pmix(const Environment& env) {
  if (!lookup(env, "PMIX_RANK")) return std::optional<Detected>();
  CKPT_ASSIGN_OR_RETURN(unsigned rank, parse_variable(env, "PMIX_RANK"));
  for (std::string_view world_name : {"PMI_SIZE", "SLURM_STEP_NUM_TASKS"}) {
    if (!lookup(env, world_name)) continue;
    CKPT_ASSIGN_OR_RETURN(unsigned world, parse_variable(env, world_name));
    return std::optional<Detected>(
        Detected{rank, world, "PMIx (PMIX_RANK, " + std::string(world_name) + ")"});
  }
  return std::optional<Detected>(Detected{rank, std::nullopt, "PMIx (PMIX_RANK)"});
}

// Trusted only inside an srun step: see the sbatch pitfall in launch_env.h.
Result<std::optional<Detected>> slurm(const Environment& env, std::vector<std::string>& notes) {
  if (!lookup(env, "SLURM_PROCID")) return std::optional<Detected>();
  const std::string* step = lookup(env, "SLURM_STEP_ID");
  if (!step) step = lookup(env, "SLURM_STEPID");
  auto step_id = step ? parse_decimal(*step) : std::nullopt;
  if (!step_id || *step_id >= kFirstSpecialSlurmStep) {
    notes.push_back(
        "SLURM_PROCID ignored: not inside an srun job step (SLURM_STEP_ID " +
        (step ? "is " + *step : std::string("is not set")) +
        "; an sbatch batch script?): run ckptstream under srun, or pass --rank/--world-size");
    return std::optional<Detected>();
  }
  CKPT_ASSIGN_OR_RETURN(unsigned rank, parse_variable(env, "SLURM_PROCID"));
  for (std::string_view world_name : {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"}) {
    if (!lookup(env, world_name)) continue;
    CKPT_ASSIGN_OR_RETURN(unsigned world, parse_variable(env, world_name));
    return std::optional<Detected>(
        Detected{rank, world, "Slurm srun (SLURM_PROCID, " + std::string(world_name) + ")"});
  }
  notes.push_back("SLURM_PROCID ignored: neither SLURM_STEP_NUM_TASKS nor SLURM_NTASKS is set");
  return std::optional<Detected>();
}

Result<std::optional<Detected>> detect_launcher(const Environment& env,
                                                std::vector<std::string>& notes) {
  CKPT_ASSIGN_OR_RETURN(auto found, pair(env, "torchrun", "RANK", "WORLD_SIZE", notes));
  if (found) return found;
  CKPT_ASSIGN_OR_RETURN(
      found, pair(env, "Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", notes));
  if (found) return found;
  CKPT_ASSIGN_OR_RETURN(found, pmix(env));
  if (found) return found;
  CKPT_ASSIGN_OR_RETURN(found, pair(env, "PMI", "PMI_RANK", "PMI_SIZE", notes));
  if (found) return found;
  return slurm(env, notes);
}

}  // namespace

Environment environment_map() {
  Environment env;
  for (char** entry = environ; entry && *entry; ++entry) {
    std::string_view text(*entry);
    auto equals = text.find('=');
    if (equals == std::string_view::npos) continue;
    env.emplace(std::string(text.substr(0, equals)), std::string(text.substr(equals + 1)));
  }
  return env;
}

Result<RankDetection> detect_rank(const RankRequest& request, const Environment& env) {
  RankDetection detection;
  std::optional<Detected> found;
  if (request.use_environment) {
    CKPT_ASSIGN_OR_RETURN(found, detect_launcher(env, detection.notes));
  }
  std::optional<unsigned> rank = request.rank;
  std::optional<unsigned> world = request.world_size;
  std::string source;
  if (found) {
    bool used = false;
    if (!rank) rank = found->rank, used = true;
    if (!world && found->world_size) world = found->world_size, used = true;
    if (used) source = found->source;
  }
  if (request.rank || request.world_size)
    source = source.empty() ? "command line" : "command line and " + source;
  if (rank && !world) {
    return usage_error(
        request.rank ? "--rank needs --world-size"
                     : found->source + " gives the rank but not the world size: pass --world-size");
  }
  if (world && !rank) {
    if (*world != 1) return usage_error("--world-size needs --rank (or a launcher's variables)");
    rank = 0;
  }
  if (!world) return detection;  // a single process
  if (*world == 0 || *world > kMaxWorldSize)
    return usage_error("world size " + std::to_string(*world) + " is out of range");
  if (*rank >= *world) {
    return usage_error("rank " + std::to_string(*rank) + " is not below the world size " +
                       std::to_string(*world) + " (" + source + ")");
  }
  detection.info = RankInfo{*rank, *world, source};
  return detection;
}

}  // namespace ckptstream
