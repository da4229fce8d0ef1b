// The subcommands. Each registers its options on a CLI11 app and runs against the library;
// nothing below src/cli knows about the command line.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/ckptstream.h"
#include "ckptstream/result.h"

namespace ckptstream::cli {

// Exit codes (README § Exit codes).
inline constexpr int kExitOk = 0;
inline constexpr int kExitMismatch = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitBadInput = 3;
inline constexpr int kExitIo = 4;
// 128 + the signal's number when stopped by SIGINT (130), SIGTERM (143) or SIGHUP (129); this is
// SIGINT's, for an interrupted error reported without a signal.
inline constexpr int kExitInterrupted = 130;

int exit_code_for(const Error& error);
int report_error(const Error& error);  // prints "ckptstream: error: ..." and returns the code

struct InspectArgs {
  std::vector<std::filesystem::path> paths;
  bool json = false;
  const InterruptFlag* interrupt = nullptr;  // set by main (signals.h)
};
void add_inspect(CLI::App& app, InspectArgs& args);
int run_inspect(const InspectArgs& args);

// How a process of a distributed run learns its rank (exec/launch_env.h) and how long rank 0
// waits for the others (exec/distributed.h): merge and convert share these.
struct DistArgs {
  std::optional<unsigned> world_size;
  std::optional<unsigned> rank;
  std::string dist = "auto";   // auto: from the launcher's variables; none: ignore them
  double wait_timeout = 7200;  // seconds rank 0 waits for the other ranks' files
};
void add_dist_options(CLI::App& cmd, DistArgs& args);

class ProgressBar;
// The library's write options for these flags: notes printed unless quiet, progress to `bar`.
WriteOptions write_options(const DistArgs& dist, bool overwrite, bool quiet, std::string owner,
                           unsigned threads, const InterruptFlag* interrupt, ProgressBar& bar);

struct ConvertArgs {
  std::vector<std::filesystem::path> sources;
  std::filesystem::path target_dir;
  std::string to = "safetensors";
  std::filesystem::path target_file;    // --to torch
  std::string prefix;                   // --to torch from DCP
  MegatronOptions megatron;             // --to megatron
  std::filesystem::path hf_model_path;  // verl's converter spelling of the source
  std::filesystem::path output_path;    // ... and of the target
  bool use_cpu_initialization = false;  // accepted (no GPU is used)
  bool dry_run = false;                 // --to megatron: print the plan, write nothing
  bool json = false;                    // ... as JSON
  std::string dtype = "auto";
  std::string max_shard_size = "5GB";
  bool overwrite = false;
  unsigned threads = 0;
  DistArgs dist;
  bool quiet = false;
  const InterruptFlag* interrupt = nullptr;  // set by main (signals.h)
};
void add_convert(CLI::App& app, ConvertArgs& args);
int run_convert(const ConvertArgs& args);
int run_convert_to_torch(const ConvertArgs& args);
int run_convert_to_megatron(const ConvertArgs& args);

// The options every command that reads a training checkpoint shares (merge, plan, test,
// verify --source), spelled as verl's model merger spells them (dashes and underscores both).
struct CheckpointArgs {
  ConversionOptions conversion;  // the flags that say how to read and what to make, bound here
  std::filesystem::path local_dir;
  std::string max_shard_size = "5GB";
  bool trust_remote_code = false;
  bool use_cpu_initialization = false;
  bool quiet = false;
};
void add_checkpoint_options(CLI::App& cmd, CheckpointArgs& args, bool local_dir_required);
// A subcommand that reads a training checkpoint (--local_dir required) with those options.
CLI::App* add_checkpoint_command(CLI::App& app, const std::string& name,
                                 const std::string& description, CheckpointArgs& args);
// The library's conversion options for these flags.
Result<ConversionOptions> to_conversion_options(const CheckpointArgs& args);
// Detects the layout and plans the model the checkpoint becomes (plan_checkpoint).
Result<ConversionPlan> plan_from_args(const CheckpointArgs& args, std::size_t sampled_headers = 0);

// --atol / --rtol, for test and verify --reference.
void add_tolerance_options(CLI::App& cmd, double& atol, double& rtol);
// Prints a comparison's problems and worst tensor; returns the exit code.
int print_comparison(const CompareReport& report, const std::filesystem::path& reference,
                     bool quiet);

struct MergeArgs {
  CheckpointArgs checkpoint;
  std::filesystem::path target_dir;
  std::string hf_upload_path;
  bool private_repo = false;
  bool overwrite = false;
  DistArgs dist;
};
void add_merge(CLI::App& app, MergeArgs& args);
int run_merge(const MergeArgs& args);

// `finalize`: completes a distributed merge whose rank 0 did not (the same checkpoint options).
struct FinalizeArgs {
  CheckpointArgs checkpoint;
  std::filesystem::path target_dir;
  double wait_timeout = 0;
};
void add_finalize(CLI::App& app, FinalizeArgs& args);
int run_finalize(const FinalizeArgs& args);

struct PlanArgs {
  CheckpointArgs checkpoint;
  bool dry_run = false, json = false, summary = false;  // --dry-run (accepted), --json, --summary
};
void add_plan(CLI::App& app, PlanArgs& args);
int run_plan(const PlanArgs& args);

struct TestArgs {
  CheckpointArgs checkpoint;
  std::filesystem::path test_hf_dir;
  double atol = 0, rtol = 0;  // 0: exact
};
void add_test(CLI::App& app, TestArgs& args);
int run_test(const TestArgs& args);

struct VerifyArgs {
  std::filesystem::path dir;
  std::filesystem::path reference;
  double atol = 0;
  double rtol = 0;
  bool source = false;
  CheckpointArgs checkpoint;  // with --source
};
void add_verify(CLI::App& app, VerifyArgs& args);
int run_verify(const VerifyArgs& args);

}  // namespace ckptstream::cli
