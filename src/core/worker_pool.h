// A fixed pool of threads over a list of independent jobs (whole output files): each worker
// takes the next job from a shared counter, so jobs start in list order and a worker that
// finishes early takes the next one. Jobs must not depend on each other; their results are
// stored by index, so what a run produces does not depend on the number of workers.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>

#include "ckptstream/result.h"

namespace ckptstream {

// The number of workers for `jobs` jobs when `requested` were asked for: 0 means one per core
// (std::thread::hardware_concurrency); never more than the jobs, never fewer than 1.
unsigned worker_count(unsigned requested, std::size_t jobs);

// Runs job(index, worker) for every index in [0, count) on `workers` threads (the calling
// thread is one of them; worker is in [0, workers)). After a job fails, `stop` is set, no job
// starts any more, and the first failure is returned once every running job has returned.
// An exception escaping a job (std::bad_alloc) becomes an error, not a crash.
Status run_on_workers(std::size_t count, unsigned workers, std::atomic<bool>& stop,
                      const std::function<Status(std::size_t index, unsigned worker)>& job);

}  // namespace ckptstream
