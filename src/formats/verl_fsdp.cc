// verl FSDP checkpoints (../shared/docs/formats/verl.md §1, torch.md §3.1):
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

#include "io/input_file.h"
#include "pickle/value.h"
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
struct Box {
  Shape offsets;
  Shape shape;
};

Box local_box(const DTensorInfo& info, const std::vector<std::int64_t>& coord,
              const std::vector<std::size_t>& shard_dims) {
  Box box{Shape(info.global_shape.size(), 0), info.global_shape};
  for (std::size_t m = 0; m < info.placements.size(); ++m) {
    if (info.placements[m].kind != Placement::Kind::kShard) continue;
    std::size_t d = shard_dims[m];
    std::int64_t pieces = info.mesh->shape[m];
    std::int64_t size = box.shape[d];
    std::int64_t chunk = size / pieces + (size % pieces != 0);
    std::int64_t begin = std::min(size, chunk * coord[m]);  // chunk * coord <= size * pieces
    std::int64_t end = std::min(size, begin + chunk);
    box.offsets[d] += begin;
    box.shape[d] = end - begin;
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

// Overflow-safe element count; nullopt on a negative size or overflow.
std::optional<std::int64_t> checked_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (auto s : shape)
    if (s < 0 || __builtin_mul_overflow(n, s, &n)) return std::nullopt;
  return n;
}

// The fragments of `tensor` tile it exactly: inside it, no two overlapping, sizes adding up.
// Fragments are swept along the dim where their offsets vary. Each fragment's input is its rank.
Status check_tiling(const LogicalTensor& tensor) {
  auto owner = [&](std::size_t i) { return std::to_string(tensor.fragments[i].source.input); };
  const auto& frags = tensor.fragments;
  std::size_t ndim = tensor.shape.size();
  std::int64_t covered = 0;
  for (std::size_t i = 0; i < frags.size(); ++i) {
    const auto& f = frags[i];
    for (std::size_t d = 0; d < ndim; ++d)
      if (f.offsets[d] < 0 || f.source.shape[d] < 0 ||
          f.offsets[d] > tensor.shape[d] - f.source.shape[d])
        return invalid_input("rank " + owner(i) + "'s shard " + shape_text(f.source.shape) +
                             " at " + shape_text(f.offsets) + " reaches outside the global shape " +
                             shape_text(tensor.shape));
    if (__builtin_add_overflow(covered, *checked_numel(f.source.shape), &covered))
      covered = INT64_MAX;
  }
  std::size_t sweep = 0;
  for (std::size_t d = 0; d < ndim; ++d)
    for (const auto& f : frags)
      if (f.offsets[d] != frags.front().offsets[d]) sweep = d;
  std::vector<std::size_t> order(frags.size());
  std::iota(order.begin(), order.end(), 0);
  auto start = [&](std::size_t i) { return ndim ? frags[i].offsets[sweep] : 0; };
  auto end = [&](std::size_t i) {
    return ndim ? frags[i].offsets[sweep] + frags[i].source.shape[sweep] : 1;
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return start(a) < start(b); });
  for (std::size_t i = 0; i < order.size(); ++i) {
    for (std::size_t j = i + 1; j < order.size() && start(order[j]) < end(order[i]); ++j) {
      const auto& a = frags[order[i]];
      const auto& b = frags[order[j]];
      bool overlap = true;
      for (std::size_t d = 0; d < ndim && overlap; ++d)
        overlap = a.offsets[d] < b.offsets[d] + b.source.shape[d] &&
                  b.offsets[d] < a.offsets[d] + a.source.shape[d];
      if (overlap)
        return invalid_input("the shards of rank " + owner(order[i]) + " and rank " +
                             owner(order[j]) + " overlap");
    }
  }
  if (covered != *checked_numel(tensor.shape))
    return invalid_input("the shards cover " + std::to_string(covered) + " of " +
                         std::to_string(*checked_numel(tensor.shape)) + " elements");
  return {};
}

// ---- identical plain tensors ------------------------------------------------------------------

using Digest = std::array<std::uint64_t, 2>;

// XXH3-128 of a view's elements, visited with dims in `order` (outermost first; the same order
// for every rank, so equal values give equal digests whatever the strides). Reads go through a
// bounded buffer: a run of the innermost dim is read in windows of at most kWindow bytes.
Result<Digest> hash_view(const InputFile& file, const TensorRef& ref,
                         const std::vector<std::size_t>& order) {
  constexpr std::uint64_t kWindow = 1u << 20;
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                 &XXH3_freeState);
  XXH3_128bits_reset(state.get());
  auto count = checked_numel(ref.shape);
  if (!count) return invalid_input("bad shape " + shape_text(ref.shape));
  const std::uint64_t es = element_size(ref.dtype);
  for (auto stride : ref.strides)
    if (stride < 0) return invalid_input("negative stride in " + shape_text(ref.strides));
  if (*count > 0) {
    std::size_t inner = order.empty() ? 0 : order.back();
    std::int64_t run = order.empty() ? 1 : ref.shape[inner];
    std::uint64_t step = order.empty() ? 0 : static_cast<std::uint64_t>(ref.strides[inner]) * es;
    std::uint64_t per_window =
        step == 0 ? static_cast<std::uint64_t>(run) : std::max<std::uint64_t>(1, kWindow / step);
    std::vector<std::byte> window, packed;
    std::vector<std::int64_t> index(order.size(), 0);  // over order[0..n-2]
    for (std::int64_t done = 0; done < *count; done += run) {
      std::int64_t element = ref.offset;
      for (std::size_t k = 0; k + 1 < order.size(); ++k)
        element += index[k] * ref.strides[order[k]];
      for (std::int64_t i = 0; i < run;) {  // one run of the innermost dim
        std::uint64_t m = std::min<std::uint64_t>(per_window, static_cast<std::uint64_t>(run - i));
        std::uint64_t begin = static_cast<std::uint64_t>(element + i * (step / es)) * es;
        std::uint64_t length = (m - 1) * step + es;
        if (!range_fits(begin, length, ref.storage_nbytes))
          return invalid_input("view reaches past its storage");
        window.resize(length);
        CKPT_TRY(file.read_at(ref.storage_begin + begin, window));
        if (step == es) {
          XXH3_128bits_update(state.get(), window.data(), length);
        } else {
          packed.resize(m * es);
          for (std::uint64_t e = 0; e < m; ++e)
            std::copy_n(window.data() + e * step, es, packed.data() + e * es);
          XXH3_128bits_update(state.get(), packed.data(), packed.size());
        }
        i += static_cast<std::int64_t>(m);
      }
      for (std::size_t k = order.empty() ? 0 : order.size() - 1; k-- > 0;) {  // next run
        if (++index[k] < ref.shape[order[k]]) break;
        index[k] = 0;
      }
    }
  }
  XXH128_hash_t h = XXH3_128bits_digest(state.get());
  return Digest{h.high64, h.low64};
}

// Dims by decreasing stride of `t` (ties: logical order): the innermost dim is the one whose
// elements lie closest together, so reads move forward through the file.
std::vector<std::size_t> visit_order(const TorchTensor& t) {
  std::vector<std::size_t> order(t.shape.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return t.strides[a] > t.strides[b]; });
  return order;
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

// Runs tasks one after another on one thread that lives as long as it does. The rank files'
// opens and unpicklings run on such threads throughout (an opener, one or two builders): a
// short-lived thread per task (2W of them) was often given a fresh malloc arena by glibc (it
// creates up to 8 per core), whose pages were then faulted in again for every rank file.
class SerialWorker {
 public:
  SerialWorker() : thread_([this] { run(); }) {}
  SerialWorker(const SerialWorker&) = delete;
  SerialWorker& operator=(const SerialWorker&) = delete;
  ~SerialWorker() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_one();
    thread_.join();  // after the tasks queued so far
  }

  template <class F>
  auto submit(F f) -> std::future<std::invoke_result_t<F&>> {
    auto task = std::make_shared<std::packaged_task<std::invoke_result_t<F&>()>>(std::move(f));
    auto result = task->get_future();
    {
      std::lock_guard lock(mutex_);
      tasks_.emplace_back([task] { (*task)(); });
    }
    ready_.notify_one();
    return result;
  }

 private:
  void run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;  // last: started once the members it uses exist
};

// Rank files are read ahead of the merge in two stages: the I/O-bound first step
// (PendingTorchFile::open: zip directory, local headers, data.pkl bytes) of files ahead, one
// after another, and the CPU-bound second step (unpickling, streamed: TorchReadOptions::
// stream_items) of one file at a time per builder thread, ahead of the caller. Memory holds the
// files opened ahead and, per builder, a data.pkl, its memo and the tensor list it yields; the
// pickle graph is freed batch by batch, so it no longer bounds how many files are in flight.
class RankReader {
  // Each file opened ahead holds its zip directory and data.pkl (20 MB per DeepSeek-V3 rank file
  // at W=16); more than two ahead only cost memory: on 16 cores the plan took as long with 15
  // (609 MB peak) as with 3 (502 MB).
  static constexpr unsigned kMaxOpenAhead = 2;
  // Unpickling is three quarters of the work of a plan of many tensors, and the caller (merging
  // each rank) and the opener need little CPU: two builders halve it from two threads on.
  // DeepSeek-V3 shape, 16 cores: 5.5 s and 350 MB with one builder, 2.7 s and 450 MB with two
  // (each file then opened one ahead only); 2 cores: 3.7-4.1 s with one, 2.4-2.5 s with two.
  static constexpr unsigned kTwoBuildersFrom = 2;

 public:
  RankReader(const std::vector<fs::path>& files, unsigned threads, const TorchReadOptions& options)
      : files_(files),
        builders_(threads >= kTwoBuildersFrom ? 2 : 1),
        window_(builders_.size() > 1 ? 1 : std::clamp(threads, 2u, kMaxOpenAhead + 1) - 1),
        options_(options) {}

  Result<TorchCheckpoint> next() {
    while (graphs_.size() < builders_.size() && start_graph()) {
    }
    if (graphs_.empty()) return invalid_input("no rank file left to read");
    auto ckpt = graphs_.front().get();
    graphs_.pop_front();
    start_graph();  // the next file's graph is built while the caller merges this one
    return ckpt;
  }

  ~RankReader() {
    for (auto& g : graphs_) g.wait();
    for (auto& p : opening_) p.wait();
  }

 private:
  using Opened = std::future<Result<PendingTorchFile>>;

  void fill() {
    while (opening_.size() < window_ && launched_ < files_.size()) {
      const fs::path& path = files_[launched_++];
      opening_.push_back(
          opener_.submit([&path, this] { return PendingTorchFile::open(path, options_); }));
    }
  }

  bool start_graph() {
    fill();
    if (opening_.empty()) return false;
    Opened opened = std::move(opening_.front());
    opening_.pop_front();
    fill();
    SerialWorker& builder = builders_[graphed_++ % builders_.size()];
    graphs_.push_back(builder.submit(
        [opened = std::move(opened), pool = pool_]() mutable -> Result<TorchCheckpoint> {
          auto pending = opened.get();
          if (!pending.ok()) return pending.error();
          CKPT_ASSIGN_OR_RETURN(auto ckpt, std::move(*pending).read(pool));
          ckpt.root.reset();  // the tensors are extracted; the graph would only hold memory
          return ckpt;
        }));
    return true;
  }

  const std::vector<fs::path>& files_;
  std::deque<SerialWorker> builders_;  // step 2, one file at a time each, in turn
  std::size_t window_;
  TorchReadOptions options_;
  std::size_t launched_ = 0, graphed_ = 0;
  std::deque<Opened> opening_;
  std::deque<std::future<Result<TorchCheckpoint>>> graphs_;  // in file order
  std::shared_ptr<pickle::BlockPool> pool_ = std::make_shared<pickle::BlockPool>();
  SerialWorker opener_;  // step 1 of each file, in order
};

// Folds the rank files into logical tensors one rank at a time: rank 0's file fixes the names,
// order and DTensor specs; every other rank's file is checked against it and contributes its
// local shards as fragments, then is dropped. Memory holds rank 0's tensor list, the fragments
// and the files being parsed, not W parsed files.
class Merger {
 public:
  Merger(const FsdpCheckpoint& checkpoint, unsigned threads, const TorchReadOptions& options,
         const InterruptFlag* interrupt)
      : checkpoint_(checkpoint), threads_(threads), options_(options), interrupt_(interrupt) {}

  Result<MergedTensors> run() {
    RankReader reader(checkpoint_.rank_files, threads_, options_);
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
      // The rank's graph and tensor list were allocated on reader threads, whose malloc arenas
      // keep freed memory; hand it back so that peak memory stays that of one rank file.
      ::malloc_trim(0);
    }
    return finish();
  }

 private:
  struct Pending {
    LogicalTensor tensor;
    std::vector<std::size_t> shard_dims;  // DTensor: per mesh dim, the sharded tensor dim
    // DTensor: rank -> flat mesh index of its shards (fsdp_shard_positions)
    const std::vector<std::size_t>* rank_position = nullptr;
    std::vector<std::size_t> visit;  // plain: dims in hashing order
    std::optional<Digest> digest;    // plain: rank 0's values
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
        p.visit = visit_order(t);
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

  Result<MergedTensors> finish() {
    MergedTensors out;
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
    Box box = local_box(first, coord, p.shard_dims);
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
    auto digest = hash_view(*file, ref, p.visit);
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

bool looks_like_fsdp_checkpoint(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (parse_rank_file_name(entry.path().filename().string())) return true;
  return false;
}

Result<FsdpCheckpoint> find_fsdp_checkpoint(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return invalid_input(dir.string() + ": not a directory");
  // world size from the name (-1: model_rank_R.pt) -> rank -> path
  std::map<int, std::map<int, fs::path>> found;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    auto name = parse_rank_file_name(entry.path().filename().string());
    if (name) found[name->world.value_or(-1)][name->rank] = entry.path();
  }
  if (ec) return io_error(dir.string() + ": cannot list: " + ec.message());
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

Result<MergedTensors> merge_fsdp_tensors(const FsdpCheckpoint& checkpoint, unsigned threads,
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
