// Where a Megatron checkpoint is and which format it has (formats/megatron_layout.h), on
// directory trees laid out as Megatron-LM, verl, Megatron-Bridge and NeMo 2 lay them out
// (docs/formats/megatron.md §0, §2.1): only names and small JSON files matter here; the readers'
// own tests use checkpoints made by real megatron-core.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>

#include "formats/megatron_layout.h"
#include "temp_dir.h"

using namespace ckptstream;
namespace fs = std::filesystem;
using ckptstream::testing::TempDir;
using ckptstream::testing::write_file;

namespace {

constexpr std::string_view kTorchDist =
    R"({"sharded_backend": "torch_dist", "sharded_backend_version": 1})";

void torch_dist_at(const fs::path& dir) {
  write_file(dir / "metadata.json", kTorchDist);
  write_file(dir / ".metadata", "stand-in");
}

void legacy_at(const fs::path& dir, std::initializer_list<std::string> ranks) {
  for (const auto& rank : ranks) write_file(dir / rank / "model_optim_rng.pt", "stand-in");
}

std::string error_of(const fs::path& dir, std::optional<std::int64_t> iteration = std::nullopt) {
  auto found = find_megatron_checkpoint(dir, iteration);
  REQUIRE(!found.ok());
  return found.error().message;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("Megatron-LM save directories: the tracker's iteration, release, --iteration") {
  TempDir tmp("megatron_layout");
  fs::path save = tmp.sub("save");
  torch_dist_at(save / "iter_0000050");
  legacy_at(save / "iter_0000100", {"mp_rank_00", "mp_rank_01"});
  write_file(save / "latest_checkpointed_iteration.txt", "100\n");
  auto latest = find_megatron_checkpoint(save);
  REQUIRE_MESSAGE(latest.ok(), latest.error().message);
  REQUIRE(latest->has_value());
  CHECK((*latest)->format == MegatronFormat::kLegacy);
  CHECK((*latest)->checkpoint_dir == save / "iter_0000100");
  CHECK((*latest)->iteration == 100);

  auto older = find_megatron_checkpoint(save, 50);
  REQUIRE(older.ok());
  CHECK((*older)->format == MegatronFormat::kTorchDist);
  CHECK((*older)->iteration == 50);
  CHECK(contains(error_of(save, 7), "iter_0000007 is missing (--iteration 7)"));

  // The iteration directory itself.
  auto direct = find_megatron_checkpoint(save / "iter_0000050");
  REQUIRE(direct.ok());
  CHECK((*direct)->checkpoint_dir == save / "iter_0000050");

  write_file(save / "latest_checkpointed_iteration.txt", " release ");
  torch_dist_at(save / "release");
  auto release = find_megatron_checkpoint(save);
  REQUIRE(release.ok());
  CHECK((*release)->checkpoint_dir == save / "release");
  CHECK((*release)->iteration == 0);

  write_file(save / "latest_checkpointed_iteration.txt", "70");
  CHECK(contains(error_of(save), "names iter_0000070, which is missing"));
  write_file(save / "latest_checkpointed_iteration.txt", "fifty");
  CHECK(contains(error_of(save), "neither an iteration number nor 'release'"));
}

TEST_CASE("verl, Megatron-Bridge and NeMo 2 layouts; what is not Megatron") {
  TempDir tmp("megatron_layout");
  fs::path actor = tmp.sub("actor");
  torch_dist_at(actor / "dist_ckpt");
  write_file(actor / "huggingface" / "config.json", "{}");
  auto verl = find_megatron_checkpoint(actor);
  REQUIRE(verl.ok());
  CHECK((*verl)->checkpoint_dir == actor / "dist_ckpt");
  CHECK((*verl)->hf_dir == actor / "huggingface");

  fs::path newer = tmp.sub("newer");
  torch_dist_at(newer / "model" / "dist_ckpt");
  auto nested = find_megatron_checkpoint(newer);
  REQUIRE(nested.ok());
  CHECK((*nested)->checkpoint_dir == newer / "model" / "dist_ckpt");

  fs::path bridge = tmp.sub("bridge") / "iter_0000010";
  torch_dist_at(bridge);
  write_file(bridge / "run_config.yaml", "model: {}\n");
  auto bridged = find_megatron_checkpoint(bridge);
  REQUIRE(bridged.ok());
  CHECK(contains((*bridged)->notes.back(), "Megatron-Bridge"));

  fs::path nemo = tmp.sub("nemo");
  torch_dist_at(nemo / "weights");
  tmp.sub("nemo/context");
  auto nemo2 = find_megatron_checkpoint(nemo);
  REQUIRE(nemo2.ok());
  CHECK((*nemo2)->checkpoint_dir == nemo / "weights");
  CHECK((*nemo2)->keys_under_module);

  // Plain DCP (no metadata.json), verl FSDP and empty directories are not Megatron's.
  fs::path dcp = tmp.sub("dcp");
  write_file(dcp / ".metadata", "stand-in");
  CHECK(!find_megatron_checkpoint(dcp).value().has_value());
  CHECK(!find_megatron_checkpoint(tmp.sub("empty")).value().has_value());

  fs::path zarr = tmp.sub("zarr");
  write_file(zarr / "metadata.json", R"({"sharded_backend": "zarr"})");
  auto old = find_megatron_checkpoint(zarr);
  REQUIRE(!old.ok());
  CHECK(old.error().kind == ErrorKind::kUnsupported);
  write_file(zarr / "metadata.json", "[]");
  CHECK(contains(error_of(zarr), "no \"sharded_backend\""));
}

TEST_CASE("legacy rank directories: names resolved with the args' parallel sizes") {
  CHECK(parse_mp_rank_name("mp_rank_01") == std::vector<std::int64_t>{1});
  CHECK(parse_mp_rank_name("mp_rank_01_002") == std::vector<std::int64_t>{1, 2});
  CHECK(parse_mp_rank_name("mp_rank_01_002_003") == std::vector<std::int64_t>{1, 2, 3});
  for (const char* bad : {"mp_rank_", "mp_rank_01_", "mp_rank_1_2_3_4", "mp_rank_for_expert00_001",
                          "mp_rank_0x", "model_rank_0"})
    CHECK_MESSAGE(!parse_mp_rank_name(bad), bad);

  TempDir tmp("megatron_layout");
  fs::path two = tmp.sub("two");  // mp_rank_TT_XXX: PP 2 (EP 1), or EP 2 (PP 1)
  legacy_at(two, {"mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"});
  auto stages = megatron_rank_dirs(two, 2, 2, 1);
  REQUIRE_MESSAGE(stages.ok(), stages.error().message);
  REQUIRE(stages->size() == 4);
  CHECK((*stages)[1].dir.filename() == "mp_rank_01_000");  // (pp, ep, tp) order
  CHECK((*stages)[2].pp == 1);
  CHECK((*stages)[2].ep == 0);
  auto experts = megatron_rank_dirs(two, 2, 1, 2);
  REQUIRE(experts.ok());
  CHECK((*experts)[2].ep == 1);
  CHECK((*experts)[2].pp == 0);
  auto neither = megatron_rank_dirs(two, 2, 1, 1);
  REQUIRE(!neither.ok());
  CHECK(contains(neither.error().message, "two numbers, but args say PP 1 and EP 1"));
  CHECK(!megatron_rank_dirs(two, 2, 2, 2).ok());  // three numbers expected then

  fs::path sparse = tmp.sub("sparse");  // ETP != TP: not a full grid, but every stage is there
  legacy_at(sparse, {"mp_rank_00_000_000", "mp_rank_01_000_001", "mp_rank_00_001_000"});
  auto folded = megatron_rank_dirs(sparse, 2, 2, 2);
  REQUIRE(folded.ok());
  CHECK(folded->size() == 3);
  auto missing_stage = megatron_rank_dirs(sparse, 2, 3, 2);
  REQUIRE(!missing_stage.ok());
  CHECK(contains(missing_stage.error().message, "pipeline stage 2"));
  auto outside = megatron_rank_dirs(sparse, 1, 2, 2);
  REQUIRE(!outside.ok());
  CHECK(contains(outside.error().message, "outside the run's TP 1"));
}
