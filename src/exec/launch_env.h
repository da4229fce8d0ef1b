// Which process of a distributed run this is, from the variables a launcher sets. ckptstream
// needs no collective communication: a launcher only starts N copies and tells each its rank.
//
//   launcher (in order of precedence)    rank                  world size
//   torchrun / torchelastic              RANK                  WORLD_SIZE
//   Open MPI mpirun (4.x, 5.x)           OMPI_COMM_WORLD_RANK  OMPI_COMM_WORLD_SIZE
//   PMIx (Open MPI 5 / PRRTE, srun --mpi=pmix)
//                                        PMIX_RANK             PMI_SIZE, else SLURM_STEP_NUM_TASKS
//                                                              (PMIx itself puts no size in the
//                                                              environment: give --world-size)
//   MPICH / Intel MPI (Hydra), Cray PMI  PMI_RANK              PMI_SIZE
//   Slurm srun                           SLURM_PROCID          SLURM_STEP_NUM_TASKS, else
//                                                              SLURM_NTASKS
//
// Slurm's sbatch pitfall: the batch script itself runs as task 0 of the job's "batch" step, with
// SLURM_PROCID=0 and SLURM_NTASKS = the job's task count, so a tool that trusted these would do
// rank 0's share only. Slurm sets SLURM_STEP_ID (and SLURM_STEP_NUM_TASKS) only for the tasks of
// an srun step (src/common/env.c: env_array_for_step sets them, env_array_for_batch_job does not,
// and setup_env skips the special batch / extern step ids); so the Slurm variables are trusted
// only when SLURM_STEP_ID (or the older SLURM_STEPID) is a plain step number, and are otherwise
// ignored with a note. SLURM_ARRAY_TASK_ID is not used: array tasks are separate jobs.
//
// Explicit --rank / --world-size override what the environment says; `--dist none` ignores the
// environment. The environment is passed in as a map (no global state): environment_map()
// makes one from the process's.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ckptstream/result.h"

namespace ckptstream {

using Environment = std::map<std::string, std::string, std::less<>>;

// The process's environment (environ) as a map.
Environment environment_map();

struct RankInfo {
  unsigned rank = 0;
  unsigned world_size = 1;
  std::string source;  // where it came from: "command line", "torchrun (RANK, WORLD_SIZE)", ...
};

struct RankRequest {
  std::optional<unsigned> rank;        // --rank
  std::optional<unsigned> world_size;  // --world-size
  bool use_environment = true;         // false: --dist none
};

struct RankDetection {
  RankInfo info;                   // world_size 1 and source "" when nothing said otherwise
  std::vector<std::string> notes;  // launcher variables seen and ignored, and why
};

// Resolves this process's rank and the world size. Errors (usage): a variable or option that is
// not a number, a rank not below the world size, a world size of 0, a rank with no world size.
Result<RankDetection> detect_rank(const RankRequest& request, const Environment& env);

}  // namespace ckptstream
