// read_dcp_tensors: key selection (the rule in dcp_checkpoint.h), chunk geometry checks, and the
// assembly of chunk items (dcp/dcp_item.h) into logical tensors.
#include "formats/dcp_checkpoint.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <set>

#include "core/worker_pool.h"
#include "dcp/dcp_item.h"
#include "dcp/dcp_metadata.h"
#include "io/input_file.h"
#include "plan/tiling.h"
#include "torch/torch_checkpoint.h"

namespace ckptstream {
namespace {

namespace fs = std::filesystem;
using dcp::ChunkMeta;
using dcp::Metadata;
using dcp::StateDictEntry;

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// "(4, 2)", as torch.Size prints.
std::string size_text(const Shape& s) {
  std::string out = "(";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

std::vector<std::string_view> components(std::string_view key) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  for (;;) {
    auto dot = key.find('.', start);
    out.push_back(key.substr(start, dot - start));
    if (dot == std::string_view::npos) return out;
    start = dot + 1;
  }
}

// Optimizer and scheduler state: never model weights (rule in dcp_checkpoint.h).
bool is_training_state(std::string_view fqn) {
  static const std::set<std::string_view> kRoots = {"optim",       "optimizer",    "optimizers",
                                                    "optim_state", "lr_scheduler", "lr_schedulers"};
  static const std::set<std::string_view> kLeaves = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq",
                                                     "momentum_buffer", "step"};
  auto parts = components(fqn);
  if (kLeaves.count(parts.back())) return true;
  for (auto part : parts)
    if (kRoots.count(part)) return true;
  return false;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// Leading torch.compile / DDP wrapper components of a model key.
std::string strip_wrappers(std::string_view key) {
  for (bool again = true; again;) {
    again = false;
    for (std::string_view w : {"_orig_mod.", "module."})
      if (starts_with(key, w) && key.size() > w.size()) {
        key.remove_prefix(w.size());
        again = true;
      }
  }
  return std::string(key);
}

// The prefix of the model keys, by the rule of dcp_checkpoint.h; a note says why.
std::string choose_prefix(const Metadata& md, const std::optional<std::string>& given,
                          std::vector<std::string>& notes) {
  if (given) {
    std::string p = *given;
    if (!p.empty() && p.back() != '.') p += '.';
    notes.push_back("model keys: prefix '" + p + "' (given)");
    return p;
  }
  std::vector<std::string_view> keys;
  for (const auto& e : md.entries)
    if (e.kind == StateDictEntry::Kind::kTensor && !is_training_state(e.fqn)) keys.push_back(e.fqn);
  auto all_under = [&](std::string_view root) {
    if (keys.empty()) return false;
    for (auto k : keys)
      if (!starts_with(k, root)) return false;
    return true;
  };
  for (std::string_view root : {"fsdp_checkpoint.model.", "app.model."})
    if (all_under(root)) {
      notes.push_back("model keys: prefix '" + std::string(root) +
                      "' (detected: every model tensor key starts with it)");
      return std::string(root);
    }
  if (all_under("model.")) {
    bool siblings = false;
    for (const auto& e : md.entries) siblings = siblings || !starts_with(e.fqn, "model.");
    bool nested = false;
    for (auto k : keys) nested = nested || starts_with(strip_wrappers(k.substr(6)), "model.");
    if (siblings || nested) {
      notes.push_back(std::string("model keys: prefix 'model.' (detected: every model tensor key "
                                  "starts with it, and ") +
                      (siblings ? "the state dict has entries beside 'model'"
                                : "keys continue with 'model.' after it") +
                      "); use --prefix '' to keep it");
      return "model.";
    }
  }
  notes.push_back("model keys: no prefix (a plain model state dict)");
  return "";
}

// Chunk boxes: inside the global size, pairwise disjoint, covering it (plan/tiling.h). Returns
// the non-empty chunks.
Result<std::vector<const ChunkMeta*>> check_tiling(const StateDictEntry& e) {
  std::vector<BoxView> boxes;
  boxes.reserve(e.chunks.size());
  for (const auto& c : e.chunks)
    boxes.push_back(BoxView{c.offsets.data(), c.sizes.data(),
                            c.offsets.size() == c.sizes.size() ? c.sizes.size() : SIZE_MAX});
  if (auto fault = find_tiling_fault(e.size, boxes)) {
    auto at = [&](std::size_t i) {
      return "the chunk at " + size_text(e.chunks[i].offsets) + " of size " +
             size_text(e.chunks[i].sizes);
    };
    std::string what = "'" + e.fqn + "': ";
    switch (fault->kind) {
      case TilingFault::Kind::kBadShape:
        return invalid_input(what + "bad size " + size_text(e.size));
      case TilingFault::Kind::kRank:
        return invalid_input(what + at(fault->first) + " has " +
                             std::to_string(e.chunks[fault->first].sizes.size()) +
                             " dimensions, the tensor " + std::to_string(e.size.size()));
      case TilingFault::Kind::kOutside:
        return invalid_input(what + at(fault->first) + " lies outside the tensor's size " +
                             size_text(e.size));
      case TilingFault::Kind::kOverlap:
        return invalid_input(what + at(fault->second) + " overlaps " + at(fault->first));
      case TilingFault::Kind::kHoles:
        return invalid_input(what + "the chunks cover " + std::to_string(fault->covered) + " of " +
                             std::to_string(fault->total) + " elements of size " +
                             size_text(e.size) + " (a chunk is missing)");
    }
  }
  std::vector<const ChunkMeta*> nonempty;
  nonempty.reserve(e.chunks.size());
  for (const auto& c : e.chunks)
    if (numel(c.sizes) != 0) nonempty.push_back(&c);
  return nonempty;
}

// The Hugging Face side of a DCP checkpoint: config.json beside it, in huggingface/ beside it,
// or next to its parent (RLinf keeps the base model elsewhere: --hf-config). A config.json that
// is there but is no regular file (a directory, a FIFO) is an error, not a missing config.
Result<std::optional<fs::path>> find_hf_dir_near(const fs::path& dir) {
  for (const fs::path& candidate : {dir, dir / "huggingface", dir.parent_path() / "huggingface"}) {
    CKPT_ASSIGN_OR_RETURN(bool found, regular_file_exists(candidate / "config.json"));
    if (found) return std::optional<fs::path>(candidate);
  }
  return std::optional<fs::path>();
}

class InputTable {
 public:
  std::size_t index(const fs::path& path) {
    auto [it, fresh] = by_path_.emplace(path, paths_.size());
    if (fresh) paths_.push_back(path);
    return it->second;
  }
  std::vector<fs::path> take() { return std::move(paths_); }

 private:
  std::map<fs::path, std::size_t> by_path_;
  std::vector<fs::path> paths_;
};

// A chunk item to locate: fragment of tensors[tensor].
struct ChunkJob {
  std::size_t tensor;
  const StateDictEntry* entry;
  const ChunkMeta* chunk;
  const dcp::StorageInfo* info;
};

// Locates every chunk's bytes in its item and appends the fragments to their tensors, in job
// order; returns the input files in order of first use. The items are read by
// options.threads workers (each item is a few small reads at scattered offsets: on many cores,
// or a cold cache, reading them one at a time leaves the machine idle), a batch of jobs at a
// time so that memory holds one batch of results; the plan and the first error (in job order)
// are those of a reading in order.
Result<std::vector<fs::path>> locate_chunks(const fs::path& dir, const DcpOptions& options,
                                            const std::vector<ChunkJob>& jobs,
                                            std::vector<LogicalTensor>& tensors) {
  constexpr std::size_t kBatch = 8192;
  const unsigned workers = worker_count(options.threads, jobs.size());
  dcp::ItemReader reader(dir, options.scratch_dir);  // shared by the workers
  InputTable inputs;
  std::vector<std::optional<Result<dcp::ChunkLocation>>> found;
  for (std::size_t begin = 0; begin < jobs.size(); begin += kBatch) {
    CKPT_TRY(check_interrupt(options.interrupt));
    const std::size_t end = std::min(jobs.size(), begin + kBatch);
    found.assign(end - begin, std::nullopt);
    // Each worker takes a run of consecutive items: the items of a file lie in offset order.
    const std::size_t runs = std::min<std::size_t>(workers, end - begin);
    std::atomic<bool> stop{false};
    Status ran = run_on_workers(runs, workers, stop, [&](std::size_t run, unsigned) {
      const std::size_t first = begin + (end - begin) * run / runs;
      const std::size_t last = begin + (end - begin) * (run + 1) / runs;
      for (std::size_t j = first; j < last && !stop.load(); ++j) {
        const ChunkJob& job = jobs[j];
        auto& slot = found[j - begin];
        slot = reader.tensor_chunk(*job.entry, *job.chunk, *job.info);
        if (!slot->ok()) return Status(slot->error());  // stops the other workers
      }
      return Status();
    });
    for (std::size_t j = begin; j < end; ++j) {
      auto& slot = found[j - begin];
      if (!slot)  // skipped when another worker's item failed: the first error is the earliest
        slot = reader.tensor_chunk(*jobs[j].entry, *jobs[j].chunk, *jobs[j].info);
      if (!slot->ok()) return slot->error();
      dcp::ChunkLocation& location = **slot;
      location.ref.input = inputs.index(location.file);
      tensors[jobs[j].tensor].fragments.push_back(
          Fragment{std::move(location.ref), jobs[j].chunk->offsets});
    }
    CKPT_TRY(ran);
  }
  return inputs.take();
}

}  // namespace

DcpKeyPolicy model_state_dict_keys(std::optional<std::string> prefix) {
  DcpKeyPolicy policy;
  policy.prefix = [prefix = std::move(prefix)](const Metadata& md,
                                               std::vector<std::string>& notes) {
    return choose_prefix(md, prefix, notes);
  };
  policy.skip = is_training_state;
  policy.rename = strip_wrappers;
  return policy;
}

Result<SourceTensors> read_dcp_entries(const fs::path& dir, const DcpOptions& options,
                                       const DcpKeyPolicy& keys) {
  CKPT_ASSIGN_OR_RETURN(Metadata md, dcp::read_metadata(dir));
  std::string label = (dir / ".metadata").string();
  SourceTensors out;
  std::size_t tensors = 0;
  std::size_t bytes = 0;
  for (const auto& e : md.entries) (e.kind == StateDictEntry::Kind::kTensor ? tensors : bytes)++;
  out.notes.push_back("DCP checkpoint " + dir.string() + " (" + md.class_name +
                      (md.version.empty() ? "" : " version " + md.version) + ", " +
                      std::to_string(tensors) + " tensors, " + std::to_string(bytes) +
                      " byte items, not read)");
  if (keys.inspect) keys.inspect(md);
  std::string prefix = keys.prefix(md, out.notes);

  std::vector<ChunkJob> jobs;  // every chunk item to locate, in state-dict order
  std::set<std::string> names;
  std::size_t training = 0;
  std::map<std::string, std::size_t> outside;  // first key component -> tensors skipped
  for (const auto& e : md.entries) {
    if (e.kind != StateDictEntry::Kind::kTensor) continue;
    if (keys.skip(e.fqn)) {
      ++training;
      continue;
    }
    if (!starts_with(e.fqn, prefix)) {
      ++outside[std::string(components(e.fqn).front())];
      continue;
    }
    LogicalTensor t;
    t.name = keys.rename(std::string_view(e.fqn).substr(prefix.size()));
    if (t.name.empty()) return invalid_input(label + ": '" + e.fqn + "' is the prefix itself");
    if (!names.insert(t.name).second)
      return invalid_input(label + ": two keys become '" + t.name + "' (the second is '" + e.fqn +
                           "')");
    t.source_dtype = t.dtype = e.dtype;
    t.shape = e.size;
    auto boxes = check_tiling(e);
    if (!boxes.ok()) return boxes.error().with_context(label);
    for (const ChunkMeta* c : *boxes) {
      const dcp::StorageInfo* info = c->storage ? &*c->storage : nullptr;
      if (!info)
        return invalid_input(label + ": '" + e.fqn + "': no storage_data entry for the chunk at " +
                             size_text(c->offsets));
      jobs.push_back(ChunkJob{out.tensors.size(), &e, c, info});
    }
    t.fragments.reserve(boxes->size());
    out.tensors.push_back(std::move(t));
  }
  CKPT_ASSIGN_OR_RETURN(out.inputs, locate_chunks(dir, options, jobs, out.tensors));
  if (out.tensors.empty() && training > 0 && outside.empty())
    return invalid_input(label + ": no model tensor: its " + std::to_string(training) +
                         " tensors are all optimizer or scheduler state");
  if (out.tensors.empty())
    return invalid_input(label + ": no model tensor under the prefix '" + prefix + "'");
  if (training > 0)
    out.notes.push_back("skipped " + std::to_string(training) +
                        " optimizer/scheduler tensors (never read)");
  for (const auto& [root, count] : outside)
    out.notes.push_back("skipped " + std::to_string(count) + " tensors under '" + root +
                        "' (outside the prefix)");
  return out;
}

namespace {

// RLinf's full_weights.pt: a plain torch.save of the gathered model state dict.
Result<SourceTensors> read_full_weights(const fs::path& path, const DcpOptions& options) {
  CKPT_ASSIGN_OR_RETURN(TorchCheckpoint ckpt, read_torch_file(path));
  SourceTensors out;
  std::string prefix = options.prefix.value_or("");
  if (!prefix.empty() && prefix.back() != '.') prefix += '.';
  out.inputs.push_back(path);
  out.notes.push_back("RLinf full_weights.pt " + path.string() + " (" +
                      std::to_string(ckpt.tensors.size()) + " tensors)");
  std::set<std::string> names;
  for (std::size_t i = 0; i < ckpt.tensors.size(); ++i) {
    const TorchTensor& src = ckpt.tensors[i];
    if (!starts_with(src.name, prefix)) continue;
    std::string what = path.string() + ": '" + src.name + "'";
    if (src.dtensor) return unsupported(what + " is a DTensor shard, not a full tensor");
    if (src.conj || src.neg) return unsupported(what + " is a conj/neg view");
    LogicalTensor t;
    t.name = strip_wrappers(std::string_view(src.name).substr(prefix.size()));
    if (!names.insert(t.name).second)
      return invalid_input(what + ": a second tensor named '" + t.name + "'");
    t.source_dtype = t.dtype = src.dtype;
    t.shape = src.shape;
    t.fragments.push_back(Fragment{ckpt.ref(i, 0), Shape(src.shape.size(), 0)});
    out.tensors.push_back(std::move(t));
  }
  if (out.tensors.empty())
    return invalid_input(path.string() + ": no tensor under '" + prefix + "'");
  return out;
}

}  // namespace

namespace {

// The layout in `dir`; nullopt when nothing of a DCP checkpoint is there.
Result<std::optional<DcpLayout>> locate_dcp(const fs::path& dir) {
  DcpLayout layout;
  for (const fs::path& candidate : {dir, dir / "dcp_checkpoint", dir / "actor" / "dcp_checkpoint"})
    if (is_file(candidate / ".metadata")) {
      layout.dcp_dir = candidate;
      break;
    }
  std::vector<fs::path> weights = {dir / "model_state_dict" / "full_weights.pt",
                                   dir / "actor" / "model_state_dict" / "full_weights.pt",
                                   dir / "full_weights.pt"};
  if (layout.dcp_dir)
    weights.insert(weights.begin(),
                   layout.dcp_dir->parent_path() / "model_state_dict" / "full_weights.pt");
  for (const auto& w : weights)
    if (is_file(w)) {
      layout.full_weights = w;
      break;
    }
  if (layout.dcp_dir) {
    if (*layout.dcp_dir != dir) layout.notes.push_back("found DCP in " + layout.dcp_dir->string());
    if (layout.full_weights)
      layout.notes.push_back("also found " + layout.full_weights->string() +
                             " (RLinf's gathered model); reading the DCP checkpoint");
    return std::optional<DcpLayout>(std::move(layout));
  }
  if (layout.full_weights) return std::optional<DcpLayout>(std::move(layout));
  if (is_file(dir / "__0.metadata"))
    return unsupported(dir.string() +
                       ": only rank-local __R.metadata files (a save without "
                       "collectives), no global .metadata: not supported");
  return std::optional<DcpLayout>();
}

}  // namespace

Result<DcpLayout> find_dcp_checkpoint(const fs::path& dir) {
  CKPT_ASSIGN_OR_RETURN(auto layout, locate_dcp(dir));
  if (!layout)
    return invalid_input(dir.string() + ": no DCP checkpoint: no .metadata in it, in " +
                         "dcp_checkpoint/ or in actor/dcp_checkpoint/, and no full_weights.pt");
  return std::move(*layout);
}

namespace {

FoundCheckpoint found_dcp(const fs::path& dir, DcpLayout layout) {
  FoundCheckpoint found;
  found.read = [dir,
                layout = std::move(layout)](const ReadOptions& options) -> Result<SourceModel> {
    SourceModel model;
    DcpOptions dcp;
    dcp.prefix = options.prefix;
    dcp.scratch_dir = options.scratch_dir;
    dcp.threads = options.threads;
    dcp.interrupt = options.interrupt;
    CKPT_ASSIGN_OR_RETURN(model.tensors, read_dcp_layout(layout, dcp));
    model.layout = layout.dcp_dir
                       ? "torch.distributed.checkpoint (DCP) in " + layout.dcp_dir->string()
                       : "RLinf full weights " + layout.full_weights->string();
    CKPT_ASSIGN_OR_RETURN(model.hf_dir, find_hf_dir_near(layout.dcp_dir ? *layout.dcp_dir : dir));
    return model;
  };
  return found;
}

}  // namespace

Result<FoundCheckpoint> find_dcp(const fs::path& dir, bool required) {
  if (required) {
    CKPT_ASSIGN_OR_RETURN(DcpLayout layout, find_dcp_checkpoint(dir));
    return found_dcp(dir, std::move(layout));
  }
  CKPT_ASSIGN_OR_RETURN(auto layout, locate_dcp(dir));
  if (!layout) return FoundCheckpoint();  // nothing of it here: not an error for auto detection
  return found_dcp(dir, std::move(*layout));
}

Result<SourceTensors> read_dcp_layout(const DcpLayout& layout, const DcpOptions& options) {
  auto merged = layout.dcp_dir ? read_dcp_entries(*layout.dcp_dir, options,
                                                  model_state_dict_keys(options.prefix))
                               : read_full_weights(*layout.full_weights, options);
  if (!merged.ok()) return merged;
  merged->notes.insert(merged->notes.begin(), layout.notes.begin(), layout.notes.end());
  return merged;
}

Result<SourceTensors> read_dcp_tensors(const fs::path& dir, const DcpOptions& options) {
  CKPT_ASSIGN_OR_RETURN(DcpLayout layout, find_dcp_checkpoint(dir));
  return read_dcp_layout(layout, options);
}

}  // namespace ckptstream
