// The streaming executor: runs a Plan. Each output file is created under a staging directory
// inside the target, preallocated, then written front to back: its header, then every tensor's
// fragments read (preadv, coalesced runs), converted to the output dtype and hashed (XXH3-128)
// in an aligned write buffer, which a thread of the file's own writes out while the next is
// being filled (file_writer.h): whole 4 KiB blocks with O_DIRECT where the file system allows,
// the rest through the page cache; a tensor with a LoRA delta is fused on the way
// (tensor_writer.h), and the inputs of the next windows are asked for ahead (input_prefetch.h).
// Page cache is kept in check by O_DIRECT, by windowed writeback (sync_file_range) of what is
// buffered and by POSIX_FADV_DONTNEED on inputs and outputs. When every file is complete and
// fsynced, files are renamed into the target (index and manifest last); on any error the
// staging directory is removed and the target holds nothing new.
//
// Output files are written in parallel by ExecOptions::threads workers (worker_pool.h), each
// taking whole files, so one worker's reads overlap another's writes; the tensors of a file are
// written in order by one worker (and its file's writer thread, which only writes). Files are
// independent, so the bytes and the manifest do not depend on the number of workers. Memory:
// the buffers are shared out between the workers (worker_options in file_jobs.h), about
// max(buffer_bytes, workers x 8 MiB) of windows and half as much of write buffers.
// Distributed runs (several processes, each writing some files) are in distributed.h.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "ckptstream/result.h"
#include "core/interrupt.h"
#include "exec/manifest.h"
#include "plan/plan.h"

namespace ckptstream {

struct ExecOptions {
  std::uint64_t buffer_bytes = 16ull << 20;      // staging buffer (resident memory bound)
  std::uint64_t writeback_bytes = 256ull << 20;  // sync_file_range / fadvise window
  // Called after each chunk with (bytes written so far, total bytes); may be empty. Called from
  // the worker threads, one call at a time.
  std::function<void(std::uint64_t, std::uint64_t)> on_progress;
  // Workers writing (or hashing) output files at once: 0 = one per core; at most the files.
  unsigned threads = 0;
  // Write whole 4 KiB blocks of output files with O_DIRECT where the file system allows (the
  // bytes stay out of the page cache); false: every byte through the page cache. The bytes
  // written are the same either way.
  bool direct_writes = true;
  // Checked at every window: once set, the run stops with an interrupted error (and removes
  // what it staged). May be null.
  const InterruptFlag* interrupt = nullptr;
  // Called after each step of execute_plan's commit (staging.h); tests end the process there.
  std::function<void()> after_commit_step;
};

// Writes the plan's files into staging and commits them into the target (staging.h); `replace`
// names files of an earlier model there, removed before the first rename (output_dir.h).
Result<Manifest> execute_plan(const Plan& plan, const std::filesystem::path& target_dir,
                              const ExecOptions& options,
                              const std::vector<std::string>& replace = {});

// Writes a plan of one output file (and nothing else: no side files, index or manifest) to the
// file `target`: born as `.<name>.tmp.<random>` beside it, locked while written (io/file_lock.h),
// renamed into place once complete and synced, and its directory synced; removed on any error.
// `convert --to torch` writes its torch zip so.
Status execute_to_file(const Plan& plan, const std::filesystem::path& target,
                       const ExecOptions& options);

// Removes the temporary files of `target` that no live execute_to_file holds (left by one that
// was killed); returns their names.
std::vector<std::string> remove_stale_temp_files(const std::filesystem::path& target);

// Identifies a plan by everything written except tensor bytes: output file names and headers,
// the index, generated files, and the side files' names and bytes. An interrupted commit of the
// same fingerprint wrote what this plan would write (from the same inputs, unless they changed).
Result<std::string> plan_fingerprint(const Plan& plan);

// Runs the plan without writing anything: `visit` receives every tensor's bytes, window by
// window and in order, exactly as execute_plan would write them (offset = bytes of this tensor
// before the window). A visitor error stops the run and is returned. One thread, files in plan
// order (ExecOptions::threads is not used).
using WindowVisitor = std::function<Status(const OutputFile& file, const PlacedTensor& tensor,
                                           std::uint64_t offset, std::span<const std::byte> bytes)>;
Status stream_plan(const Plan& plan, const ExecOptions& options, const WindowVisitor& visit);

// The manifest execute_plan would write, computed from the sources without writing (verify
// --source), by ExecOptions::threads workers; other_files from the side files' sources, the
// generated files and the index.
Result<Manifest> hash_plan(const Plan& plan, const ExecOptions& options);

}  // namespace ckptstream
