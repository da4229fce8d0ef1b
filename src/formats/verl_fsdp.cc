// verl FSDP checkpoints (docs/formats/verl.md §1, torch.md §3.1):
//   <dir>/model_world_size_{W}_rank_{R}.pt   torch.save(model.state_dict()) of rank R; values are
//                                             DTensors (this rank's local shard + DTensorSpec)
//                                             or plain tensors (W = 1, persistent buffers)
//   <dir>/model_rank_{R}.pt                   the same, named as for one day in Feb 2025
//   <dir>/fsdp_config.json                    {"FSDP_version": 1|2, "world_size": W} (since
//   06/2025) <dir>/huggingface/                        config.json, tokenizer, generation config
//   <dir>/optim_*, extra_state_*              never opened here
// A DTensor's global tensor is rebuilt from the ranks' local shards: rank R sits at a coordinate
// of the device mesh (its position in the row-major rank list); each mesh dim with Shard(d) cuts
// tensor dim d into k = mesh size pieces with torch.chunk semantics (ceil(N/k) per piece, the
// trailing pieces shorter or empty); a mesh dim with Replicate holds full copies, of which the
// ranks at coordinate 0 are read.
#include "formats/verl_fsdp.h"

#include <malloc.h>
#include <simdjson.h>
#include <xxhash.h>
#include <algorithm>
#include <array>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <set>
#include <span>
#include <thread>
#include <unordered_map>

#include "formats/rank_files.h"
#include "formats/replica_hash.h"
#include "io/input_file.h"
#include "pickle/value.h"
#include "plan/tiling.h"
#include "plan/views.h"
#include "torch/torch_checkpoint.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kConfigName = "fsdp_config.json";
constexpr int kMaxWorldSize = 1 << 24;

// ---- directory layout -------------------------------------------------------------------------

// "model_world_size_{W}_rank_{R}.pt" (world set) or "model_rank_{R}.pt" (world unset).
struct RankFileName {
  std::optional<int> world;
  int rank = 0;
};

// A decimal number of at most 8 digits at the start of `text`, which is advanced past it.
std::optional<int> take_number(std::string_view& text) {
  std::size_t n = 0;
  while (n < text.size() && n < 9 && text[n] >= '0' && text[n] <= '9') ++n;
  if (n == 0 || n > 8) return std::nullopt;
  int value = 0;
  std::from_chars(text.data(), text.data() + n, value);
  text.remove_prefix(n);
  return value;
}

bool take_prefix(std::string_view& text, std::string_view prefix) {
  if (text.substr(0, prefix.size()) != prefix) return false;
  text.remove_prefix(prefix.size());
  return true;
}

std::optional<RankFileName> parse_rank_file_name(std::string_view name) {
  RankFileName out;
  if (take_prefix(name, "model_world_size_")) {
    out.world = take_number(name);
    if (!out.world || !take_prefix(name, "_rank_")) return std::nullopt;
  } else if (!take_prefix(name, "model_rank_")) {
    return std::nullopt;
  }
  auto rank = take_number(name);
  if (!rank || name != ".pt") return std::nullopt;
  out.rank = *rank;
  return out;
}

std::string rank_file_name(std::optional<int> world, const std::string& rank) {
  if (!world) return "model_rank_" + rank + ".pt";
  return "model_world_size_" + std::to_string(*world) + "_rank_" + rank + ".pt";
}
std::string rank_file_name(std::optional<int> world, int rank) {
  return rank_file_name(world, std::to_string(rank));
}
std::string rank_file_pattern(int world) {  // world < 0: model_rank_*.pt
  return rank_file_name(world < 0 ? std::nullopt : std::optional<int>(world), "*");
}

struct FsdpConfig {
  int world_size = 0;
  int fsdp_version = 0;
};

Result<FsdpConfig> read_fsdp_config(const fs::path& path) {
  CKPT_ASSIGN_OR_RETURN(std::string text, read_small_file(path, 1u << 20));
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(text).get(doc) || !doc.is_object())
    return invalid_input(path.string() + ": not a JSON object");
  FsdpConfig config;
  std::int64_t world = 0;
  if (doc["world_size"].get(world) || world < 1 || world > kMaxWorldSize)
    return invalid_input(path.string() + ": world_size is not a positive integer");
  config.world_size = static_cast<int>(world);
  std::int64_t version = 0;
  if (!doc["FSDP_version"].get(version) && version >= 1 && version <= 9)
    config.fsdp_version = static_cast<int>(version);
  return config;
}

// ---- shard geometry ---------------------------------------------------------------------------

std::string count(std::size_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

std::string placements_text(const DTensorInfo& info) {
  std::string out = "(";
  for (std::size_t i = 0; i < info.placements.size(); ++i)
    out += (i ? ", " : "") + to_string(info.placements[i]);
  return out + ")";
}

std::string mesh_text(const DeviceMeshInfo& mesh) {
  std::string out;
  for (std::size_t i = 0; i < mesh.shape.size(); ++i) {
    if (i) out += " x ";
    if (i < mesh.dim_names.size()) out += mesh.dim_names[i] + "=";
    out += std::to_string(mesh.shape[i]);
  }
  return "mesh (" + out + ")";
}

bool same_placement(const Placement& a, const Placement& b) {
  return a.kind == b.kind && a.dim == b.dim && a.split_factor == b.split_factor &&
         a.reduce_op == b.reduce_op;
}

bool is_data_parallel_dim(std::string_view name) {
  return name == "fsdp" || name == "ddp" || name == "dp" || name == "dp_shard" ||
         name == "dp_replicate";
}

// The box of the global tensor that the rank at mesh coordinate `coord` holds: Shard(d) cuts
// the (already cut) dim d with torch.chunk semantics, mesh dims in order, as DTensor does.
ShardBox local_box(const DTensorInfo& info, const std::vector<std::int64_t>& coord,
                   const std::vector<std::size_t>& shard_dims) {
  ShardBox box{Shape(info.global_shape.size(), 0), info.global_shape};
  for (std::size_t m = 0; m < info.placements.size(); ++m) {
    if (info.placements[m].kind != Placement::Kind::kShard) continue;
    std::size_t d = shard_dims[m];
    ChunkRange range = chunk_range(box.shape[d], info.mesh->shape[m], coord[m]);
    box.offsets[d] += range.begin;
    box.shape[d] = range.length;
  }
  return box;
}

// Row-major coordinate of flat index `flat` in a mesh of shape `shape`.
std::vector<std::int64_t> unravel(std::int64_t flat, const Shape& shape) {
  std::vector<std::int64_t> coord(shape.size(), 0);
  for (std::size_t i = shape.size(); i-- > 0;) {
    coord[i] = flat % shape[i];
    flat /= shape[i];
  }
  return coord;
}

// The shards of `tensor` tile it exactly (plan/tiling.h). Each fragment's input is its rank.
Status check_tiling(const LogicalTensor& tensor) {
  auto fault = find_tiling_fault(tensor);
  if (!fault) return {};
  auto owner = [&](std::size_t i) { return std::to_string(tensor.fragments[i].source.input); };
  switch (fault->kind) {
    case TilingFault::Kind::kOverlap:
      return invalid_input("the shards of rank " + owner(fault->first) + " and rank " +
                           owner(fault->second) + " overlap");
    case TilingFault::Kind::kHoles:
      return invalid_input("the shards cover " + std::to_string(fault->covered) + " of " +
                           std::to_string(fault->total) + " elements");
    default: {
      const Fragment& f = tensor.fragments[fault->first];
      return invalid_input("rank " + owner(fault->first) + "'s shard " +
                           shape_text(f.source.shape) + " at " + shape_text(f.offsets) +
                           " reaches outside the global shape " + shape_text(tensor.shape));
    }
  }
}

// ---- merging ----------------------------------------------------------------------------------

// Is the rank at mesh coordinate `coord` in the replica that is read (coordinate 0 on every
// Replicate mesh dim)?
bool in_first_replica(const DTensorInfo& info, const std::vector<std::int64_t>& coord) {
  for (std::size_t m = 0; m < coord.size(); ++m)
    if (info.placements[m].kind == Placement::Kind::kReplicate && coord[m] != 0) return false;
  return true;
}

// The ranks of that replica, in shard order (`position`: fsdp_shard_positions).
std::vector<std::int64_t> first_replica_ranks(const DTensorInfo& info,
                                              const std::vector<std::size_t>& position) {
  std::vector<std::int64_t> out(position.size(), -1);
  for (std::size_t rank = 0; rank < position.size(); ++rank)
    if (in_first_replica(info,
                         unravel(static_cast<std::int64_t>(position[rank]), info.mesh->shape)))
      out[position[rank]] = static_cast<std::int64_t>(rank);
  std::erase(out, -1);
  return out;
}

bool same_mesh(const DeviceMeshInfo& a, const DeviceMeshInfo& b) {
  return &a == &b || (a.shape == b.shape && a.ranks == b.ranks && a.dim_names == b.dim_names);
}

// Folds the rank files into logical tensors one rank at a time: rank 0's file fixes the names,
// order and DTensor specs; every other rank's file is checked against it and contributes its
// local shards as fragments, then is dropped. Memory holds rank 0's tensor list, the fragments
// and the files being parsed, not W parsed files.
class Merger {
 public:
  Merger(const FsdpCheckpoint& checkpoint, unsigned threads, const TorchReadOptions& options,
         const InterruptFlag* interrupt)
      : checkpoint_(checkpoint), threads_(threads), options_(options), interrupt_(interrupt) {}

  Result<SourceTensors> run() {
    RankFileReader reader(checkpoint_.rank_files, threads_, options_);
    for (std::size_t r = 0; r < checkpoint_.rank_files.size(); ++r) {
      CKPT_TRY(check_interrupt(interrupt_));
      CKPT_ASSIGN_OR_RETURN(TorchCheckpoint ckpt, reader.next());
      CKPT_TRY(check_saved_name(r, ckpt));
      computed_offsets_ += ckpt.computed_offsets;
      if (r == 0) {
        first_ = std::move(ckpt);
        CKPT_TRY(start());
        CKPT_TRY(add_rank(0, first_));
      } else {
        CKPT_TRY(add_rank(r, ckpt));
      }
      ckpt = TorchCheckpoint();
      RankFileReader::release_freed_memory();  // peak memory stays that of one rank file
    }
    return finish();
  }

 private:
  struct Pending {
    LogicalTensor tensor;
    std::vector<std::size_t> shard_dims;  // DTensor: per mesh dim, the sharded tensor dim
    // DTensor: rank -> flat mesh index of its shards (fsdp_shard_positions)
    const std::vector<std::size_t>* rank_position = nullptr;
    std::vector<std::size_t> visit;     // plain: dims in hashing order
    std::optional<ValueDigest> digest;  // plain: rank 0's values
  };

  std::string file_of(std::size_t r) const { return checkpoint_.rank_files[r].string(); }

  // The name rank r's file was saved as (its zip's top directory) must be a rank file name of
  // the same rank and world size as the file's own name. Another name ("archive": saved to a
  // stream) says nothing and is accepted.
  Status check_saved_name(std::size_t r, const TorchCheckpoint& ckpt) const {
    if (checkpoint_.accept_renamed_rank_files) return {};
    auto saved = parse_rank_file_name(ckpt.archive_name + ".pt");
    auto named = parse_rank_file_name(checkpoint_.rank_files[r].filename().string());
    if (!saved || !named) return {};
    bool same_world = !saved->world || !named->world || saved->world == named->world;
    if (saved->rank == named->rank && same_world) return {};
    return invalid_input(file_of(r) + " was saved as " + ckpt.archive_name +
                         ".pt (torch.save records the name in the file): the rank files were "
                         "renamed or swapped; if on purpose, pass --accept-renamed-rank-files");
  }
  std::string rank_text(std::size_t r) const {
    return "rank " + std::to_string(r) + " (" + file_of(r) + ")";
  }
  static Error in_tensor(const Error& error, const std::string& name) {
    return error.with_context("tensor " + name);
  }

  // Rank 0 fixes the tensors: names once each, DTensor layouts this merger can rebuild.
  Status start() {
    pending_.resize(first_.tensors.size());
    index_.reserve(first_.tensors.size());
    for (std::size_t i = 0; i < first_.tensors.size(); ++i) {
      const TorchTensor& t = first_.tensors[i];
      if (!index_.emplace(t.name, i).second)
        return invalid_input(file_of(0) + ": tensor " + t.name + " appears twice");
      Pending& p = pending_[i];
      p.tensor.name = t.name;
      if (t.dtensor) {
        const DTensorInfo& info = *t.dtensor;
        auto dims = check_layout(info);
        if (!dims.ok()) return in_tensor(dims.error(), t.name);
        p.shard_dims = std::move(*dims);
        auto [positions, fresh] = mesh_positions_.try_emplace(info.mesh.get());
        if (fresh) {  // once per mesh: every DTensor of a file shares one
          auto position = fsdp_shard_positions(*info.mesh);
          if (!position)
            return in_tensor(unsupported("device mesh " + mesh_text(*info.mesh) + " " +
                                         shape_text(info.mesh->ranks) +
                                         " lists its ranks in an order that gives two ranks the "
                                         "same shards"),
                             t.name);
          positions->second = std::move(*position);
        }
        p.rank_position = &positions->second;
        // One fragment per rank of the replica read (fewer where shards are empty), reserved:
        // growing by doubling moved each of DeepSeek-V3's 45 000 lists four times at W=16.
        std::size_t readers = 1;
        for (std::size_t m = 0; m < info.placements.size(); ++m)
          if (info.placements[m].kind == Placement::Kind::kShard)
            readers *= static_cast<std::size_t>(info.mesh->shape[m]);
        p.tensor.fragments.reserve(readers);
        p.tensor.source_dtype = p.tensor.dtype = info.dtype;
        p.tensor.shape = info.global_shape;
      } else {
        p.tensor.source_dtype = p.tensor.dtype = t.dtype;
        p.tensor.shape = t.shape;
        p.visit = visit_order(t.strides);
      }
    }
    return {};
  }

  // Every tensor of rank r's file, matched by name with rank 0's.
  Status add_rank(std::size_t r, const TorchCheckpoint& ckpt) {
    std::vector<bool> seen(first_.tensors.size(), false);
    std::optional<InputFile> file;  // opened for the first plain tensor to compare
    for (std::size_t j = 0; j < ckpt.tensors.size(); ++j) {
      const TorchTensor& t = ckpt.tensors[j];
      // Ranks save their state dicts in the same order: look the name up only when it differs.
      std::size_t i = j;
      if (j >= first_.tensors.size() || first_.tensors[j].name != t.name) {
        auto it = index_.find(t.name);
        if (it == index_.end())
          return invalid_input("tensor " + t.name + " is in " + rank_text(r) +
                               " but missing from rank 0's file " + file_of(0));
        i = it->second;
      }
      if (seen[i]) return invalid_input(file_of(r) + ": tensor " + t.name + " appears twice");
      seen[i] = true;
      const TorchTensor& reference = first_.tensors[i];
      Status status = reference.dtensor ? add_dtensor(pending_[i], reference, r, ckpt, j)
                                        : add_plain(pending_[i], reference, r, ckpt, j, file);
      if (!status.ok()) return in_tensor(status.error(), t.name);
    }
    for (std::size_t i = 0; i < seen.size(); ++i)
      if (!seen[i])
        return invalid_input("tensor " + first_.tensors[i].name + " is in rank 0's file " +
                             file_of(0) + " but missing from " + rank_text(r));
    return {};
  }

  Result<SourceTensors> finish() {
    SourceTensors out;
    out.inputs = checkpoint_.rank_files;
    std::size_t dtensors = 0, plains = 0;
    std::set<std::string> layouts;
    for (std::size_t i = 0; i < pending_.size(); ++i) {
      Pending& p = pending_[i];
      const TorchTensor& t = first_.tensors[i];
      if (t.dtensor) {
        ++dtensors;
        // Fragments in mesh order, whatever order the ranks were read in (a fragment's input is
        // its rank; the mesh need not list the ranks in order).
        auto before = [&](const Fragment& a, const Fragment& b) {
          return (*p.rank_position)[a.source.input] < (*p.rank_position)[b.source.input];
        };
        auto& fragments = p.tensor.fragments;
        if (!std::is_sorted(fragments.begin(), fragments.end(), before))
          std::sort(fragments.begin(), fragments.end(), before);
        Status tiled = check_tiling(p.tensor);
        if (!tiled.ok()) return in_tensor(tiled.error(), t.name);
        layouts.insert(placements_text(*t.dtensor) + " over " + mesh_text(*t.dtensor->mesh));
        if (replica_note_.empty()) {
          auto readers = first_replica_ranks(*t.dtensor, *p.rank_position);
          if (readers.size() < checkpoint_.rank_files.size()) {
            std::string list;
            for (auto r : readers) list += (list.empty() ? "" : ", ") + std::to_string(r);
            replica_note_ = "replicated mesh dims: one replica read (ranks " + list + ")";
          }
        }
      } else {
        ++plains;
        p.tensor.fragments.push_back(Fragment{first_.ref(i, 0), Shape(p.tensor.shape.size(), 0)});
      }
      out.tensors.push_back(std::move(p.tensor));
    }
    const std::size_t world = checkpoint_.rank_files.size();
    out.notes.push_back(count(out.tensors.size(), "tensor") + " from " + count(world, "rank file") +
                        ": " + count(dtensors, "DTensor") + ", " + count(plains, "plain tensor") +
                        (world > 1 && plains ? " (identical on every rank, read once)" : ""));
    for (const auto& layout : layouts) out.notes.push_back("placements " + layout);
    if (!replica_note_.empty()) out.notes.push_back(replica_note_);
    if (computed_offsets_ > 0)
      out.notes.push_back(
          "file offsets of " + count(computed_offsets_, "zip record") +
          " computed from torch's alignment rule, which a sample of local headers in each rank "
          "file follows; merge reads every header");
    return out;
  }

  // Placements this merger can rebuild, on a mesh of data-parallel dims holding every rank once.
  // Returns, per mesh dim, the (non-negative) tensor dim of a Shard placement.
  Result<std::vector<std::size_t>> check_layout(const DTensorInfo& info) const {
    std::vector<std::size_t> shard_dims(info.placements.size(), 0);
    const std::size_t ndim = info.global_shape.size();
    if (!checked_numel(info.global_shape))
      return invalid_input("bad global shape " + shape_text(info.global_shape));
    for (std::size_t m = 0; m < info.placements.size(); ++m) {
      const Placement& p = info.placements[m];
      if (p.kind == Placement::Kind::kPartial)
        return unsupported("placement " + to_string(p) +
                           " is not supported (values are not reduced)");
      if (p.kind == Placement::Kind::kStridedShard)
        return unsupported("placement " + to_string(p) +
                           " is not supported (interleaved FSDP + tensor-parallel shards)");
      if (p.kind == Placement::Kind::kOther)
        return unsupported("placement " + to_string(p) + " is not supported");
      if (p.kind == Placement::Kind::kShard) {
        std::int64_t d = p.dim < 0 ? p.dim + static_cast<std::int64_t>(ndim) : p.dim;
        if (d < 0 || d >= static_cast<std::int64_t>(ndim))
          return invalid_input("placement " + to_string(p) + " of a " + std::to_string(ndim) +
                               "-d tensor");
        shard_dims[m] = static_cast<std::size_t>(d);
      }
    }
    const DeviceMeshInfo& mesh = *info.mesh;
    for (std::size_t m = 0; m < mesh.dim_names.size(); ++m)
      if (!is_data_parallel_dim(mesh.dim_names[m]))
        return unsupported("mesh dimension '" + mesh.dim_names[m] + "' (" + mesh_text(mesh) +
                           ") is not supported: only data-parallel dims (fsdp, ddp, dp, "
                           "dp_shard, dp_replicate) can be merged");
    auto size = checked_numel(mesh.shape);
    for (auto s : mesh.shape)
      if (s < 1) size.reset();
    if (!size || static_cast<std::uint64_t>(*size) != mesh.ranks.size())
      return invalid_input("malformed device mesh: shape " + shape_text(mesh.shape) + " with " +
                           std::to_string(mesh.ranks.size()) + " ranks");
    const std::size_t world = checkpoint_.rank_files.size();
    std::set<std::int64_t> ranks(mesh.ranks.begin(), mesh.ranks.end());
    if (ranks.size() != mesh.ranks.size() || mesh.ranks.size() != world || *ranks.begin() != 0 ||
        *ranks.rbegin() != static_cast<std::int64_t>(world) - 1)
      return invalid_input("the device mesh holds ranks " + shape_text(mesh.ranks) +
                           ", but the checkpoint has the files of ranks 0.." +
                           std::to_string(world - 1));
    return shard_dims;
  }

  // Rank r holds the same DTensorSpec as rank 0 (dtype, global shape, placements, mesh), a local
  // tensor of that dtype, and the local shape its mesh coordinate gives; its shard becomes a
  // fragment unless it is a further replica or empty.
  Status add_dtensor(Pending& p, const TorchTensor& reference, std::size_t r,
                     const TorchCheckpoint& ckpt, std::size_t j) {
    const DTensorInfo& first = *reference.dtensor;
    const TorchTensor& t = ckpt.tensors[j];
    if (!t.dtensor)
      return invalid_input("a DTensor on rank 0 but a plain tensor on " + rank_text(r));
    const DTensorInfo& info = *t.dtensor;
    if (info.dtype != first.dtype || info.global_shape != first.global_shape)
      return invalid_input(rank_text(r) + " says " + std::string(torch_name(info.dtype)) + " " +
                           shape_text(info.global_shape) + ", rank 0 says " +
                           std::string(torch_name(first.dtype)) + " " +
                           shape_text(first.global_shape));
    bool same =
        info.placements.size() == first.placements.size() && same_mesh(*info.mesh, *first.mesh);
    for (std::size_t m = 0; same && m < info.placements.size(); ++m)
      same = same_placement(info.placements[m], first.placements[m]);
    if (!same)
      return invalid_input(rank_text(r) + " has placements " + placements_text(info) + " over " +
                           mesh_text(*info.mesh) + " " + shape_text(info.mesh->ranks) +
                           ", rank 0 has " + placements_text(first) + " over " +
                           mesh_text(*first.mesh) + " " + shape_text(first.mesh->ranks));
    if (t.dtype != info.dtype)
      return invalid_input(rank_text(r) + " holds a " + std::string(torch_name(t.dtype)) +
                           " local shard of a " + std::string(torch_name(info.dtype)) + " DTensor");
    if (t.conj || t.neg)
      return unsupported(rank_text(r) + " has a lazy conj/neg bit; resolve it before saving");
    std::size_t flat = (*p.rank_position)[r];
    auto coord = unravel(static_cast<std::int64_t>(flat), first.mesh->shape);
    ShardBox box = local_box(first, coord, p.shard_dims);
    if (t.shape != box.shape)
      return invalid_input(rank_text(r) + " holds a local shard of shape " + shape_text(t.shape) +
                           ", but " + placements_text(first) + " of " +
                           shape_text(first.global_shape) + " over " + mesh_text(*first.mesh) +
                           " gives " + shape_text(box.shape) + " at mesh coordinate " +
                           shape_text(coord));
    if (!in_first_replica(first, coord)) return {};
    if (*checked_numel(box.shape) == 0) return {};
    p.tensor.fragments.push_back(Fragment{ckpt.ref(j, r), std::move(box.offsets)});
    return {};
  }

  // A plain tensor must be the same on every rank (a replicated buffer); rank 0's is taken.
  Status add_plain(Pending& p, const TorchTensor& first, std::size_t r, const TorchCheckpoint& ckpt,
                   std::size_t j, std::optional<InputFile>& file) {
    const TorchTensor& t = ckpt.tensors[j];
    if (t.dtensor)
      return invalid_input("a plain tensor on rank 0 but a DTensor on " + rank_text(r));
    if (t.dtype != first.dtype || t.shape != first.shape)
      return invalid_input("a plain tensor that differs between ranks: rank 0 holds " +
                           std::string(torch_name(first.dtype)) + " " + shape_text(first.shape) +
                           ", " + rank_text(r) + " holds " + std::string(torch_name(t.dtype)) +
                           " " + shape_text(t.shape));
    if (t.conj || t.neg)
      return unsupported(rank_text(r) + " has a lazy conj/neg bit; resolve it before saving");
    if (checkpoint_.rank_files.size() == 1) return {};
    if (!file) {
      CKPT_ASSIGN_OR_RETURN(auto opened, InputFile::open(checkpoint_.rank_files[r]));
      file.emplace(std::move(opened));
    }
    TensorRef ref = ckpt.ref(j, r);
    auto digest = hash_view_values(*file, ref, p.visit);
    if (!digest.ok()) return digest.error().with_context(rank_text(r));
    if (!p.digest) {
      p.digest = *digest;
    } else if (*digest != *p.digest || ref.byteswap != first_.big_endian) {
      return invalid_input("a plain tensor whose values differ between rank 0 (" + file_of(0) +
                           ") and " + rank_text(r) +
                           "; a tensor that is not a DTensor must be identical on every rank");
    }
    return {};
  }

  const FsdpCheckpoint& checkpoint_;
  unsigned threads_;
  TorchReadOptions options_;
  const InterruptFlag* interrupt_;
  std::size_t computed_offsets_ = 0;
  TorchCheckpoint first_;
  std::unordered_map<std::string_view, std::size_t> index_;  // views of first_'s names
  std::vector<Pending> pending_;
  // rank -> flat mesh index, per mesh of rank 0's file (check_layout: a permutation of the ranks)
  std::unordered_map<const DeviceMeshInfo*, std::vector<std::size_t>> mesh_positions_;
  std::string replica_note_;
};

}  // namespace

namespace {

// world size from the name (-1: model_rank_R.pt) -> rank -> path
using RankFileListing = std::map<int, std::map<int, fs::path>>;

Result<RankFileListing> list_rank_files(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return invalid_input(dir.string() + ": not a directory");
  RankFileListing found;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    auto name = parse_rank_file_name(entry.path().filename().string());
    if (name) found[name->world.value_or(-1)][name->rank] = entry.path();
  }
  if (ec) return io_error(dir.string() + ": cannot list: " + ec.message());
  return found;
}

Result<FsdpCheckpoint> find_in_listing(const fs::path& dir, const RankFileListing& found) {
  std::error_code ec;
  if (found.empty())
    return invalid_input(dir.string() +
                         ": no verl FSDP model shards (model_world_size_{W}_rank_{R}.pt or "
                         "model_rank_{R}.pt)");
  if (found.size() > 1) {
    return invalid_input(dir.string() + ": holds model files of two layouts (" +
                         rank_file_pattern(found.begin()->first) + " and " +
                         rank_file_pattern(std::next(found.begin())->first) +
                         "); remove the stale ones or point at a clean directory");
  }
  const auto& [named_world, files] = *found.begin();
  std::optional<int> name_world;
  if (named_world >= 0) name_world = named_world;

  FsdpCheckpoint ckpt;
  ckpt.dir = dir;
  std::string source;
  CKPT_ASSIGN_OR_RETURN(bool has_config, regular_file_exists(dir / kConfigName));
  if (has_config) {
    CKPT_ASSIGN_OR_RETURN(auto config, read_fsdp_config(dir / kConfigName));
    if (name_world && *name_world != config.world_size)
      return invalid_input((dir / kConfigName).string() + " says world_size " +
                           std::to_string(config.world_size) + ", but the model files are " +
                           rank_file_pattern(named_world));
    ckpt.world_size = config.world_size;
    ckpt.fsdp_version = config.fsdp_version;
    source = "fsdp_config.json";
    ckpt.notes.push_back(
        "world size " + std::to_string(ckpt.world_size) + " from fsdp_config.json" +
        (config.fsdp_version ? " (FSDP" + std::to_string(config.fsdp_version) + ")" : ""));
  } else {
    ckpt.world_size = name_world ? *name_world : files.rbegin()->first + 1;
    source = "the file names";
    ckpt.notes.push_back("world size " + std::to_string(ckpt.world_size) +
                         " from the file names (no fsdp_config.json)");
  }
  if (!name_world) ckpt.notes.push_back("older file names model_rank_{R}.pt");
  if (ckpt.world_size > kMaxWorldSize)
    return invalid_input(dir.string() + ": world size " + std::to_string(ckpt.world_size) +
                         " is implausible");
  for (int r = 0; r < ckpt.world_size; ++r) {
    auto it = files.find(r);
    if (it == files.end())
      return invalid_input((dir / rank_file_name(name_world, r)).string() +
                           " is missing (world size " + std::to_string(ckpt.world_size) + " from " +
                           source + ")");
    ckpt.rank_files.push_back(it->second);
  }
  if (files.rbegin()->first >= ckpt.world_size)
    return invalid_input(files.rbegin()->second.string() + ": rank " +
                         std::to_string(files.rbegin()->first) + " is outside world size " +
                         std::to_string(ckpt.world_size) + " (from " + source + ")");
  if (fs::is_directory(dir / "huggingface", ec)) ckpt.hf_dir = dir / "huggingface";
  return ckpt;
}

Result<SourceModel> read_found(const FsdpCheckpoint& found, const ReadOptions& options) {
  FsdpCheckpoint checkpoint = found;
  checkpoint.accept_renamed_rank_files = options.accept_renamed_rank_files;
  SourceModel model;
  CKPT_ASSIGN_OR_RETURN(model.tensors, merge_fsdp_tensors(checkpoint, options.threads,
                                                          TorchReadOptions{options.sampled_headers},
                                                          options.interrupt));
  model.layout = "verl FSDP checkpoint, world size " + std::to_string(checkpoint.world_size);
  model.hf_dir = checkpoint.hf_dir;
  model.notes = checkpoint.notes;
  return model;
}

}  // namespace

Result<FsdpCheckpoint> find_fsdp_checkpoint(const fs::path& dir) {
  CKPT_ASSIGN_OR_RETURN(auto listing, list_rank_files(dir));
  return find_in_listing(dir, listing);
}

Result<FoundCheckpoint> find_verl_fsdp(const fs::path& dir, bool required) {
  CKPT_ASSIGN_OR_RETURN(auto listing, list_rank_files(dir));
  if (listing.empty() && !required) return FoundCheckpoint();
  CKPT_ASSIGN_OR_RETURN(auto checkpoint, find_in_listing(dir, listing));
  FoundCheckpoint found;
  found.read = [checkpoint = std::move(checkpoint)](const ReadOptions& options) {
    return read_found(checkpoint, options);
  };
  return found;
}

Result<SourceTensors> merge_fsdp_tensors(const FsdpCheckpoint& checkpoint, unsigned threads,
                                         const TorchReadOptions& options,
                                         const InterruptFlag* interrupt) {
  if (checkpoint.rank_files.empty() ||
      checkpoint.rank_files.size() != static_cast<std::size_t>(checkpoint.world_size))
    return invalid_input(checkpoint.dir.string() + ": " +
                         std::to_string(checkpoint.rank_files.size()) +
                         " rank files for world size " + std::to_string(checkpoint.world_size));
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  // Only the tensors are needed: each rank file's graph is freed batch by batch as it is read.
  TorchReadOptions streaming = options;
  streaming.stream_items = true;
  return Merger(checkpoint, threads, streaming, interrupt).run();
}

std::optional<std::vector<std::size_t>> fsdp_shard_positions(const DeviceMeshInfo& mesh) {
  const std::size_t n = mesh.ranks.size(), dims = mesh.shape.size();
  std::vector<std::size_t> coords(n * dims, 0);  // per flat index, the coordinate of its shards
  std::size_t stride = 1;
  for (std::size_t d = dims; d-- > 0;) {
    const auto size = static_cast<std::size_t>(mesh.shape[d]);
    std::vector<std::pair<std::int64_t, std::size_t>> group(size);  // (rank, flat)
    for (std::size_t base = 0; base < n; ++base) {
      if (base / stride % size != 0) continue;  // one group per base with coordinate 0 on d
      for (std::size_t k = 0; k < size; ++k)
        group[k] = {mesh.ranks[base + k * stride], base + k * stride};
      std::sort(group.begin(), group.end());
      for (std::size_t k = 0; k < size; ++k) coords[group[k].second * dims + d] = k;
    }
    stride *= size;
  }
  std::vector<std::size_t> position(n, SIZE_MAX);
  for (std::size_t flat = 0; flat < n; ++flat) {
    std::size_t at = 0;
    for (std::size_t d = 0; d < dims; ++d)
      at = at * static_cast<std::size_t>(mesh.shape[d]) + coords[flat * dims + d];
    position[static_cast<std::size_t>(mesh.ranks[flat])] = at;
  }
  std::vector<bool> taken(n, false);
  for (std::size_t at : position) {
    if (taken[at]) return std::nullopt;
    taken[at] = true;
  }
  return position;
}

}  // namespace ckptstream
