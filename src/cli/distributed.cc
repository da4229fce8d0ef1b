// Writing a model in one process or as one rank of a distributed run (merge, convert), and
// `ckptstream finalize`.
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"
#include "exec/distributed.h"
#include "exec/launch_env.h"
#include "exec/output_dir.h"

namespace ckptstream::cli {
namespace fs = std::filesystem;
namespace {

Result<RankInfo> resolve_rank(const DistArgs& args, bool quiet) {
  RankRequest request{args.rank, args.world_size, args.dist != "none"};
  CKPT_ASSIGN_OR_RETURN(RankDetection detection, detect_rank(request, environment_map()));
  if (!quiet) {
    for (const auto& note : detection.notes) std::fprintf(stderr, "note: %s\n", note.c_str());
    const RankInfo& info = detection.info;
    if (!info.source.empty()) {
      std::fprintf(stderr, "note: distributed run: rank %u of %u (from %s)\n", info.rank,
                   info.world_size, info.source.c_str());
    }
  }
  return detection.info;
}

std::chrono::milliseconds to_millis(double seconds) {
  return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000));
}

std::string joined(const std::vector<std::string>& names, std::size_t most) {
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < most; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > most) out += ", ...";
  return out;
}

// Rank 0's (or finalize's) last step, with a note while it waits.
Result<Manifest> finalize_run(OutputDir& target, const Plan& plan, double wait_seconds, bool quiet,
                              const InterruptFlag* interrupt) {
  FinalizeOptions options;
  options.wait_timeout = to_millis(wait_seconds);
  options.interrupt = interrupt;
  bool noted = false;
  options.on_wait = [&](std::size_t done, std::size_t total) {
    if (quiet || noted || done == total) return;
    noted = true;
    std::fprintf(stderr, "note: waiting for the other ranks: %zu of %zu files complete\n", done,
                 total);
  };
  return target.finalize(plan, options);
}

void print_notes(const OutputDir& dir, bool quiet) {
  if (quiet) return;
  for (const auto& note : dir.notes())
    std::fprintf(stderr, "note: %s: %s\n", dir.path().c_str(), note.c_str());
}

}  // namespace

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

namespace {

Result<bool> write_model_once(const Plan& plan, const ModelTarget& target, const DistArgs& dist,
                              ExecOptions options, const std::optional<Plan>& adapter) {
  CKPT_ASSIGN_OR_RETURN(RankInfo rank, resolve_rank(dist, target.quiet));
  // A signal that came while the plan was made: stop before anything is created.
  CKPT_TRY(check_interrupt(options.interrupt));
  ProgressBar bar(target.label, target.quiet);
  options.on_progress = [&](std::uint64_t done, std::uint64_t total) { bar.update(done, total); };
  PrepareOptions prepare{target.overwrite, target.label};
  if (rank.world_size == 1) {
    CKPT_ASSIGN_OR_RETURN(OutputDir dir, OutputDir::prepare(target.dir, plan, prepare));
    print_notes(dir, target.quiet);
    if (dir.already_complete()) return true;
    auto manifest = dir.write(plan, options);
    bar.finish();
    if (!manifest.ok()) return manifest.error();
    if (adapter) CKPT_TRY(dir.write_subdir("lora_adapter", *adapter, options));
    return true;
  }
  std::size_t mine = files_of_rank(plan, rank.rank, rank.world_size).size();
  if (mine == 0 && rank.rank != 0) {
    if (!target.quiet)
      std::fprintf(stderr, "note: rank %u has no file to write (%zu files for %u ranks)\n",
                   rank.rank, plan.files.size(), rank.world_size);
    return false;
  }
  CKPT_ASSIGN_OR_RETURN(OutputDir dir, OutputDir::prepare_shared(target.dir, plan, prepare));
  print_notes(dir, target.quiet);
  if (dir.already_complete()) return rank.rank == 0;
  auto report = dir.write_rank(plan, options, rank.rank, rank.world_size);
  bar.finish();
  if (!report.ok()) return report.error();
  if (!target.quiet) {
    std::fprintf(stderr, "note: rank %u wrote %zu of the %zu files\n", rank.rank,
                 report->written.size(), plan.files.size());
    if (!report->skipped.empty())
      std::fprintf(stderr, "note: rank %u skipped %zu complete file(s) of an earlier run: %s\n",
                   rank.rank, report->skipped.size(), joined(report->skipped, 4).c_str());
  }
  if (rank.rank != 0) return false;
  CKPT_TRY(finalize_run(dir, plan, dist.wait_timeout, target.quiet, options.interrupt));
  if (adapter) CKPT_TRY(dir.write_subdir("lora_adapter", *adapter, options));
  return true;
}

}  // namespace

Result<bool> write_model(const Plan& plan, const ModelTarget& target, const DistArgs& dist,
                         ExecOptions options, const std::optional<Plan>& adapter) {
  auto written = write_model_once(plan, target, dist, std::move(options), adapter);
  if (written.ok() || written.error().kind != ErrorKind::kInterrupted) return written;
  // Everything this run staged was removed as it unwound; what was committed before stays.
  return interrupted_error("nothing of this run was left in " + target.dir.string() +
                           " (its partial files were removed)");
}

void add_finalize(CLI::App& app, FinalizeArgs& args) {
  auto* cmd = app.add_subcommand(
      "finalize",
      "Complete a distributed merge whose rank 0 did not: once every rank's files are there, "
      "write the index, side files and manifest (the same checkpoint options as merge)");
  add_checkpoint_options(*cmd, args.checkpoint, true);
  cmd->add_option("--target_dir,--target-dir,-o", args.target_dir, "output directory")->required();
  cmd->add_option("--wait-timeout,--wait_timeout", args.wait_timeout,
                  "seconds to wait for files still being written (0: look once)")
      ->capture_default_str();
}

int run_finalize(const FinalizeArgs& args) {
  auto merge = plan_from_args(args.checkpoint);
  if (!merge.ok()) return report_error(merge.error());
  auto target = OutputDir::open_run(args.target_dir, "finalize");
  if (!target.ok()) return report_error(target.error());
  auto manifest = finalize_run(*target, merge->model, args.wait_timeout, args.checkpoint.quiet,
                               args.checkpoint.interrupt);
  if (!manifest.ok()) return report_error(manifest.error());
  if (merge->adapter) {
    ExecOptions options;
    options.threads = args.checkpoint.threads;
    options.interrupt = args.checkpoint.interrupt;
    auto written = target->write_subdir("lora_adapter", *merge->adapter, options);
    if (!written.ok()) return report_error(written.error());
  }
  if (!args.checkpoint.quiet)
    std::printf("finalized %zu files in %s\n", merge->model.files.size(), args.target_dir.c_str());
  return kExitOk;
}

}  // namespace ckptstream::cli
