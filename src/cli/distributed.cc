// Writing a model in one process or as one rank of a distributed run (merge, convert), and
// `ckptstream finalize`.
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"

namespace ckptstream::cli {
void add_dist_options(CLI::App& cmd, DistArgs& args) {
  cmd.add_option("--world-size,--world_size", args.world_size,
                 "distributed run: number of processes (default: from torchrun, mpirun, srun, "
                 "PMI/PMIx variables)");
  cmd.add_option("--rank", args.rank, "distributed run: this process's rank, 0 to world size - 1");
  cmd.add_option("--dist", args.dist,
                 "auto: take rank and world size from a launcher's variables; none: ignore them")
      ->check(CLI::IsMember({"auto", "none"}))
      ->capture_default_str();
  cmd.add_option("--wait-timeout,--wait_timeout", args.wait_timeout,
                 "distributed run: seconds rank 0 waits for the other ranks' files before "
                 "failing (then `ckptstream finalize` completes the run)")
      ->capture_default_str();
}

WriteOptions write_options(const DistArgs& dist, bool overwrite, bool quiet, std::string owner,
                           unsigned threads, const InterruptFlag* interrupt, ProgressBar& bar) {
  WriteOptions options;
  options.overwrite = overwrite;
  options.owner = std::move(owner);
  options.threads = threads;
  options.interrupt = interrupt;
  options.on_progress = [&bar](std::uint64_t done, std::uint64_t total) {
    bar.update(done, total);
  };
  if (!quiet)
    options.on_note = [](std::string_view note) {
      std::fprintf(stderr, "note: %.*s\n", static_cast<int>(note.size()), note.data());
    };
  options.rank = dist.rank;
  options.world_size = dist.world_size;
  options.ignore_environment = dist.dist == "none";
  options.wait_timeout =
      std::chrono::milliseconds(static_cast<std::int64_t>(dist.wait_timeout * 1000));
  return options;
}

void add_finalize(CLI::App& app, FinalizeArgs& args) {
  auto* cmd = add_checkpoint_command(
      app, "finalize",
      "Complete a distributed merge whose rank 0 did not: once every rank's files are there, "
      "write the index, side files and manifest (the same checkpoint options as merge)",
      args.checkpoint);
  cmd->add_option("--target_dir,--target-dir,-o", args.target_dir, "output directory")->required();
  cmd->add_option("--wait-timeout,--wait_timeout", args.wait_timeout,
                  "seconds to wait for files still being written (0: look once)")
      ->capture_default_str();
}

int run_finalize(const FinalizeArgs& args) {
  auto plan = plan_from_args(args.checkpoint);
  if (!plan.ok()) return report_error(plan.error());
  ProgressBar bar("finalize", true);
  DistArgs dist;
  dist.wait_timeout = args.wait_timeout;
  WriteOptions options =
      write_options(dist, false, args.checkpoint.quiet, "finalize",
                    args.checkpoint.conversion.threads, args.checkpoint.conversion.interrupt, bar);
  auto finalized = finalize_model(*plan, args.target_dir, options);
  if (!finalized.ok()) return report_error(finalized.error());
  if (!args.checkpoint.quiet)
    std::printf("finalized %zu files in %s\n", plan->file_count(), args.target_dir.c_str());
  return kExitOk;
}

}  // namespace ckptstream::cli
