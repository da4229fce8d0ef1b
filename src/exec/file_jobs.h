// The executor's building blocks, shared by execute_plan / hash_plan (executor.cc) and the
// distributed runner (distributed.cc): checking a plan, streaming one output file, running
// jobs over whole files on a pool of workers, and staging the files written after the tensor
// files (side files, generated text files, the index, the manifest).
#pragma once

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "exec/executor.h"
#include "exec/staging.h"
#include "exec/tensor_writer.h"
#include "io/input_file.h"
#include "plan/plan.h"

namespace ckptstream {

Result<std::vector<InputFile>> open_inputs(const Plan& plan);

// Everything that can be checked before a byte is written (plan_check.h).
Status check_plan(const Plan& plan, std::span<const InputFile> inputs);

// One worker's share of the buffers when `workers` share them: buffer_bytes / workers, but at
// least min(buffer_bytes, 8 MiB) (reads and writes stay large); writeback_bytes likewise, at
// least min(writeback_bytes, 64 MiB).
ExecOptions worker_options(const ExecOptions& options, unsigned workers);

// Streams every tensor of `file` through `visit`, counting progress, and returns the digest of
// what it saw: what is hashed is what is written.
Result<FileDigest> stream_file(const OutputFile& file, ExecContext& context,
                               const WindowVisitor& visit);

// Writes `file` into staging (preallocated, header, tensors, fdatasync); not yet committed.
Result<FileDigest> write_output_file(const OutputFile& file, const OutputStaging& staging,
                                     ExecContext& context);

// Runs `job` for each of plan.files[files[i]] on ExecOptions::threads workers, each with its own
// ExecContext; returns the digests in the order of `files`. Progress counts the tensor bytes of
// these files.
using FileJob = std::function<Result<FileDigest>(const OutputFile& file, ExecContext& context)>;
Result<std::vector<FileDigest>> run_file_jobs(const Plan& plan, std::span<const std::size_t> files,
                                              std::span<const InputFile> inputs,
                                              const ExecOptions& options, const FileJob& job);

// Stages side files, text files, the index and the manifest, appending their names to
// `commit_order` in that order (so that a reader who sees the manifest sees a complete model);
// the manifest's other_files are set to the digests of what was staged.
Status stage_finishing_files(const Plan& plan, Manifest& manifest, const OutputStaging& staging,
                             std::vector<std::string>& commit_order);

}  // namespace ckptstream
