// Reading the torch.save files of many ranks (verl FSDP's model_world_size_W_rank_R.pt,
// Megatron's mp_rank_TT_PPP[_EEE]/model_optim_rng.pt): a checkpoint's tensors are spread over
// them and every file must be parsed, but memory must stay that of a few files. Shared by every
// reader of rank files; each folds the files it gets into logical tensors in its own way.
//
// The files are read ahead of the caller in two stages: the I/O-bound first step
// (PendingTorchFile::open: zip directory, local headers, data.pkl bytes) of files ahead, one
// after another, and the CPU-bound second step (unpickling, streamed: TorchReadOptions::
// stream_items) of one file at a time per builder thread. Memory holds the files opened ahead
// and, per builder, a data.pkl, its memo and the tensor list it yields; each file's pickle graph
// is dropped once its tensors are extracted.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "ckptstream/result.h"
#include "torch/torch_checkpoint.h"

namespace ckptstream {

class RankFileReader {
 public:
  // `files` must outlive the reader; `threads` >= 1 (from 2 on, two files are unpickled at once).
  RankFileReader(const std::vector<std::filesystem::path>& files, unsigned threads,
                 const TorchReadOptions& options);
  ~RankFileReader();
  RankFileReader(const RankFileReader&) = delete;
  RankFileReader& operator=(const RankFileReader&) = delete;

  // The next file's tensors (TorchCheckpoint::root dropped), in file order.
  Result<TorchCheckpoint> next();

  // Hands the memory freed since (a checkpoint returned by next() and dropped) back to the
  // system: it was allocated on the reader's threads, whose malloc arenas keep freed memory, so
  // without this peak memory would grow with the number of files rather than stay that of one.
  static void release_freed_memory();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptstream
