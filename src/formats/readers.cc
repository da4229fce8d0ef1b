// The table of checkpoint readers (source_model.h): where a new checkpoint format plugs in.
#include <system_error>

#include "formats/dcp_checkpoint.h"
#include "formats/megatron_checkpoint.h"
#include "formats/source_model.h"
#include "formats/verl_fsdp.h"

namespace ckptstream {
namespace fs = std::filesystem;

namespace {

constexpr CheckpointReader kReaders[] = {
    {"fsdp", "verl FSDP model_world_size_W_rank_R.pt files", false, find_verl_fsdp},
    // Before dcp: a torch_dist checkpoint is a DCP one whose keys are megatron-core's.
    {"megatron",
     "a Megatron checkpoint (latest_checkpointed_iteration.txt, torch_dist metadata.json, "
     "mp_rank_* directories)",
     true, find_megatron},
    {"dcp", "a DCP .metadata, RLinf's dcp_checkpoint/ or model_state_dict/full_weights.pt", true,
     find_dcp},
};

// The directory can be listed (else detection would see an empty one and say nothing is there).
Status check_listable(const fs::path& dir) {
  std::error_code ec;
  auto status = fs::status(dir, ec);
  if (ec) return io_error(dir.string() + ": " + ec.message());
  if (!fs::is_directory(status)) return invalid_input(dir.string() + ": not a directory");
  fs::directory_iterator list(dir, ec);
  if (ec) return io_error(dir.string() + ": cannot list: " + ec.message());
  return {};
}

}  // namespace

std::span<const CheckpointReader> checkpoint_readers() {
  return kReaders;
}

std::string backend_names() {
  std::string names = "auto";
  for (std::size_t i = 0; i < std::size(kReaders); ++i)
    names +=
        std::string(i + 1 == std::size(kReaders) ? " or " : ", ") + std::string(kReaders[i].name);
  return names;
}

Result<FoundCheckpoint> find_checkpoint(const fs::path& dir, std::string_view backend) {
  const CheckpointReader* named = nullptr;
  for (const auto& reader : kReaders)
    if (reader.name == backend) named = &reader;
  if (!named && backend != "auto")
    return usage_error("--backend must be " + backend_names() + " (got '" + std::string(backend) +
                       "')");
  CKPT_TRY(check_listable(dir));
  if (named) {
    CKPT_ASSIGN_OR_RETURN(auto found, named->find(dir, true));
    found.reader = named;
    return found;
  }
  CKPT_ASSIGN_OR_RETURN(auto found, detect_checkpoint(dir));
  if (found) return found;
  std::string looked_for;
  for (const auto& reader : kReaders)
    looked_for += (looked_for.empty() ? "" : ", ") + std::string(reader.looks_for);
  return invalid_input(dir.string() + ": no supported checkpoint found (looked for " + looked_for +
                       ")");
}

Result<FoundCheckpoint> detect_checkpoint(const fs::path& dir) {
  for (const auto& reader : kReaders) {
    CKPT_ASSIGN_OR_RETURN(auto found, reader.find(dir, false));
    if (found) {
      found.reader = &reader;
      return found;
    }
  }
  return FoundCheckpoint();
}

}  // namespace ckptstream
