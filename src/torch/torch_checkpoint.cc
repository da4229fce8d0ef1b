// read_torch_file: format detection (torch.md §0), the zip format (§1) and the legacy format
// (§2). The unpickled object is interpreted into tensors by tensor_interpreter.cc.
#include "torch/torch_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <span>
#include <string>

#include "io/input_file.h"
#include "pickle/unpickler.h"
#include "pickle/value.h"
#include "torch/tensor_interpreter.h"
#include "zip/zip_archive.h"

namespace ckptstream {
namespace {

using pickle::Kind;
using pickle::Value;
using pickle::ValuePtr;
using torch_internal::StorageUse;
using torch_internal::StorageUses;

// The legacy magic number 0x1950A86A20F9469CFC6C as LONG1 stores it.
constexpr unsigned char kLegacyMagic[] = {0x6C, 0xFC, 0x9C, 0x46, 0xF9,
                                          0x20, 0x6A, 0xA8, 0x50, 0x19};
constexpr std::int64_t kLegacyProtocolVersion = 1001;

bool starts_with(std::span<const std::byte> bytes, std::size_t at, std::string_view text) {
  return at <= bytes.size() && text.size() <= bytes.size() - at &&
         std::memcmp(bytes.data() + at, text.data(), text.size()) == 0;
}

std::string_view text_of(std::span<const std::byte> bytes, std::uint64_t offset,
                         std::uint64_t size) {
  return {reinterpret_cast<const char*>(bytes.data() + offset), static_cast<std::size_t>(size)};
}

// One storage persistent id: ('storage', storage_type, key, location, numel[, view_metadata]).
struct StorageId {
  DType dtype = DType::kU8;
  std::string key;
  std::uint64_t numel = 0;
  ValuePtr view = nullptr;  // legacy: None or (view_key, offset, size)
};

// The dtype a storage class stands for ("BFloat16Storage", "UntypedStorage": uint8).
Result<DType> storage_class_dtype(const Value& storage_class) {
  std::string cls(storage_class.class_name());
  if (cls.empty() || cls.find("Storage") == std::string::npos)
    return invalid_input("storage persistent id names no storage class");
  if (cls == "UntypedStorage") return DType::kU8;
  auto dtype = dtype_from_storage_class(cls);
  if (!dtype) return unsupported("unknown storage class " + cls);
  return *dtype;
}

// `classes` remembers the dtype of each storage class node: every tensor of a file names one of
// a few memoized classes.
Result<std::optional<StorageId>> parse_storage_id(
    const Value& pid, std::unordered_map<const Value*, DType>& classes) {
  using Maybe = std::optional<StorageId>;
  if (!pid.is(Kind::kTuple) || pid.items().empty()) return Maybe{};
  auto tag = pid.items()[0]->as_string();
  if (!tag || *tag != "storage") return Maybe{};
  const auto& f = pid.items();
  if (f.size() < 5) return invalid_input("storage persistent id has fewer than 5 fields");
  StorageId id;
  auto known = classes.find(f[1]);
  if (known != classes.end()) {
    id.dtype = known->second;
  } else {
    CKPT_ASSIGN_OR_RETURN(id.dtype, storage_class_dtype(*f[1]));
    classes.emplace(f[1], id.dtype);
  }
  auto key = f[2]->as_string();
  if (!key) return invalid_input("storage key is not a string");
  id.key = std::string(*key);
  auto numel = f[4]->as_int();
  if (!numel || *numel < 0) return invalid_input("storage '" + id.key + "': bad element count");
  id.numel = static_cast<std::uint64_t>(*numel);
  if (f.size() > 5 && !f[5]->is(Kind::kNone)) id.view = f[5];
  return Maybe(std::move(id));
}

// One local header in this many is probed for being in the page cache (prepare_zip).
constexpr std::size_t kCacheProbeEvery = 256;

// data.pkl is read whole into memory (a few percent of the graph built from it); unpickle()
// accepts less than 4 GiB.
constexpr std::uint64_t kMaxPickleBytes = UINT32_MAX;

}  // namespace

class PendingTorchFile::Reader {
 public:
  Reader(InputFile file, const std::filesystem::path& path, const TorchReadOptions& options)
      : file_(std::move(file)),
        options_(options),
        read_([this](std::uint64_t offset, std::span<std::byte> out) {
          return file_.read_at(offset, out);
        }) {
    ckpt_.path = path;
  }
  Reader(const Reader&) = delete;  // read_ refers to this object's file_
  Reader& operator=(const Reader&) = delete;

  // Step 1: what can be read without building the pickle graph.
  Status prepare() {
    std::vector<std::byte> head(
        static_cast<std::size_t>(std::min<std::uint64_t>(file_.size(), 512)));
    CKPT_TRY(file_.read_at(0, head));
    if (starts_with(head, 0, "PK\x03\x04")) return prepare_zip();
    if (starts_with(head, 0, "PYTORCH1"))
      return unsupported("pre-release PYTORCH1 archive format (rejected by PyTorch too)");
    if (starts_with(head, 257, "ustar"))
      return unsupported("tar-based torch.save format of PyTorch <= 0.3 is not supported");
    if (!head.empty() && static_cast<std::uint8_t>(head[0]) == 0x80) {
      // The legacy format interleaves pickles and raw storages: parsed from a mapping.
      CKPT_ASSIGN_OR_RETURN(bytes_, file_.mapped());
      ckpt_.format = TorchCheckpoint::Format::kLegacy;
      return {};
    }
    if (head.size() < 4) return invalid_input("file too short to be a torch.save file");
    return invalid_input("not a torch.save file (neither a zip archive nor a legacy pickle)");
  }

  // Step 2: the pickle graph, its storages and tensors.
  Status finish(std::shared_ptr<pickle::BlockPool> pool) {
    if (ckpt_.format == TorchCheckpoint::Format::kLegacy) return read_legacy();
    return finish_zip(std::move(pool));
  }

  TorchCheckpoint take() { return std::move(ckpt_); }
  const std::filesystem::path& path() const { return ckpt_.path; }

 private:
  // ---- zip format ------------------------------------------------------------------------------
  // Positional reads only: the end records, the central directory, each local header, data.pkl
  // and the few small records. Mapping the file instead made every local header of a large rank
  // file a page fault (and its unmapping a large TLB shootdown).
  Status prepare_zip() {
    ckpt_.format = TorchCheckpoint::Format::kZip;
    file_.random_access();
    // Cold local headers are asked for all at once; a sample tells whether they are cached
    // already (re-runs, verify after merge), when asking would only cost a syscall each.
    std::size_t announced = 0;
    bool warm = false;
    zip::LocalHeaders headers;
    headers.sample = options_.sampled_headers;
    headers.will_read = [&](std::uint64_t offset, std::uint64_t length) {
      if (announced++ % kCacheProbeEvery == 0) warm = file_.cached(offset, length);
      if (!warm) file_.will_need(offset, length);
    };
    CKPT_ASSIGN_OR_RETURN(auto parsed,
                          zip::Archive::parse(file_.size(), read_, file_.path().string(), headers));
    archive_.emplace(std::move(parsed));
    ckpt_.computed_offsets = archive_->computed_offsets();
    const zip::Archive& archive = *archive_;
    if (archive.entries().empty()) return invalid_input("zip archive has no entries");
    const std::string& first = archive.entries().front().name;
    auto slash = first.find('/');
    if (slash == std::string::npos)
      return invalid_input("zip entry '" + first + "' is not under an archive directory");
    prefix_ = first.substr(0, slash + 1);
    ckpt_.archive_name = first.substr(0, slash);
    number_records();
    const std::string constants = prefix_ + "constants.pkl", code = prefix_ + "code/";
    for (const auto& e : archive.entries())
      if (e.name == constants || e.name.starts_with(code))
        return unsupported("this is a TorchScript archive (it has " + e.name +
                           "), not a torch.save file; save a state_dict instead");
    if (!archive.find(prefix_ + "data.pkl"))
      return invalid_input("no " + prefix_ + "data.pkl record: not a torch.save archive");
    CKPT_ASSIGN_OR_RETURN(const zip::Entry* pkl, archive.stored(prefix_ + "data.pkl"));
    if (const zip::Entry* order = archive.find(prefix_ + "byteorder")) {
      CKPT_TRY(archive.stored(order->name));
      std::vector<std::byte> bytes(
          static_cast<std::size_t>(std::min<std::uint64_t>(order->size, 16)));
      CKPT_TRY(file_.read_at(order->data_offset, bytes));
      std::string_view text = text_of(bytes, 0, bytes.size());
      if (text == "big" && order->size == 3)
        ckpt_.big_endian = true;
      else if (text != "little" || order->size != 6)
        return invalid_input("byteorder record says '" + std::string(text) + "'");
    }
    if (pkl->size > kMaxPickleBytes)
      return invalid_input(prefix_ + "data.pkl of " + std::to_string(pkl->size) +
                           " bytes is implausibly large");
    pickle_.resize(static_cast<std::size_t>(pkl->size));
    return file_.read_at(pkl->data_offset, pickle_);
  }

  Status finish_zip(std::shared_ptr<pickle::BlockPool> pool) {
    if (options_.stream_items) {
      if (finish_streaming(pool).ok()) return {};
      // Whatever went wrong, the whole-graph reading below says it best (or, for a pickle that
      // is valid but not streamable, succeeds).
      reset_collected();
    }
    auto pickled = pickle::unpickle(pickle_, 0, std::move(pool));
    if (!pickled.ok()) return pickled.error().with_context("data.pkl");
    const std::size_t pickle_bytes = pickle_.size();
    std::vector<std::byte>().swap(pickle_);  // the graph holds copies of what it needs
    ckpt_.root = pickled->value;
    CKPT_TRY(resolve_storages(pickled->persistent_ids));
    Status status =
        torch_internal::collect_tensors(*pickled->value, uses_, read_, ckpt_, pickle_bytes);
    archive_.reset();
    return status;
  }

  // Each batch of the saved dict's items: its storages resolved, its tensors collected; then the
  // unpickler may free the batch's graph, and every pointer into it is forgotten.
  class ItemCollector final : public pickle::RootItemSink {
   public:
    explicit ItemCollector(Reader& reader)
        : reader_(reader),
          collector_(reader.uses_, reader.read_, reader.ckpt_, reader.pickle_.size()) {}

    Status items(std::span<const ValuePtr> keys_and_values,
                 std::span<const Value* const> persistent_ids) override {
      CKPT_TRY(reader_.resolve_storages(persistent_ids));
      for (std::size_t i = 0; i < keys_and_values.size(); i += 2) {
        auto name = torch_internal::entry_name(*keys_and_values[i]);
        if (!name) continue;
        // A dict keeps a key's first position and last value: not something to stream. (Equal
        // hashes of different keys, as unlikely, only send the file to the whole-graph reading.)
        if (!seen_.insert(std::hash<std::string>()(*name)))
          return unsupported("the saved dict sets '" + *name + "' twice");
        CKPT_TRY(collector_.walk(*keys_and_values[i + 1], *name));
      }
      return {};
    }

    void released(std::span<const Value* const> persistent_ids) override {
      for (const Value* pid : persistent_ids) reader_.uses_.erase(pid);
      reader_.storage_classes_.clear();
      collector_.forget_nodes();
    }

    // What was not streamed: all of the saved object if nothing was (it is no dict of items).
    Status rest(const Value& root, bool streamed) {
      if (streamed && !root.entries().empty())
        return unsupported("the saved dict has items that were not streamed");
      return collector_.walk(root);
    }

   private:
    // 64-bit hashes in an open-addressing table: a set of the names themselves cost a tenth of
    // the reading of a large rank file (an allocation per name, and as many to free).
    class HashSet {
     public:
      bool insert(std::uint64_t hash) {
        hash += hash == 0;  // 0 marks a free slot
        if (2 * (count_ + 1) > slots_.size()) grow();
        std::size_t mask = slots_.size() - 1;
        for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
          if (slots_[i] == hash) return false;
          if (slots_[i] == 0) {
            slots_[i] = hash;
            ++count_;
            return true;
          }
        }
      }

     private:
      void grow() {
        std::vector<std::uint64_t> old(std::max<std::size_t>(64, 2 * slots_.size()), 0);
        old.swap(slots_);
        count_ = 0;
        for (std::uint64_t h : old)
          if (h) insert(h);
      }
      std::vector<std::uint64_t> slots_;
      std::size_t count_ = 0;
    };

    Reader& reader_;
    torch_internal::TensorCollector collector_;
    HashSet seen_;  // names of the items handed over
  };

  Status finish_streaming(const std::shared_ptr<pickle::BlockPool>& pool) {
    ItemCollector sink(*this);
    // A state dict has about one tensor per storage record; growing the list by doubling would
    // briefly hold one and a half of it.
    ckpt_.tensors.reserve(archive_->entries().size());
    CKPT_ASSIGN_OR_RETURN(auto pickled, pickle::unpickle_streaming(pickle_, sink, pool));
    CKPT_TRY(resolve_storages(pickled.persistent_ids));
    CKPT_TRY(sink.rest(*pickled.value, pickled.streamed_items > 0));
    std::vector<std::byte>().swap(pickle_);
    ckpt_.root = pickled.value;
    archive_.reset();
    return {};
  }

  // Back to before finish_streaming: no storages resolved, no tensors collected.
  void reset_collected() {
    ckpt_.tensors.clear();
    ckpt_.storages.clear();
    uses_.clear();
    by_key_.clear();
    storage_classes_.clear();
    std::fill(numbered_storages_.begin(), numbered_storages_.end(), SIZE_MAX);
  }

  // ---- legacy format ---------------------------------------------------------------------------
  Status read_legacy() {
    std::size_t at = 0;
    auto next = [&](const char* what) -> Result<pickle::Unpickled> {
      auto p = pickle::unpickle(bytes_, at);
      if (!p.ok()) return p.error().with_context(std::string("legacy ") + what);
      at = p->end;
      return p;
    };
    CKPT_ASSIGN_OR_RETURN(auto magic_pickle, next("magic number"));
    const Value* magic = magic_pickle.value.get();
    if (!magic->is(Kind::kBigInt) || magic->text().size() != sizeof kLegacyMagic ||
        std::memcmp(magic->text().data(), kLegacyMagic, sizeof kLegacyMagic) != 0)
      return invalid_input("not a torch.save file (a pickle without torch's magic number)");
    CKPT_ASSIGN_OR_RETURN(auto version_pickle, next("protocol version"));
    const Value* version = version_pickle.value.get();
    if (version->as_int() != kLegacyProtocolVersion)
      return unsupported("legacy protocol version " + version->int_decimal() + " (expected 1001)");
    CKPT_ASSIGN_OR_RETURN(auto sys_info_pickle, next("sys_info"));
    const Value* sys_info = sys_info_pickle.value.get();
    if (auto little = sys_info->find("little_endian"))
      ckpt_.big_endian = !little->as_bool().value_or(true);
    const std::size_t root_begin = at;
    CKPT_ASSIGN_OR_RETURN(auto root, next("object pickle"));
    ckpt_.root = root.value;
    CKPT_ASSIGN_OR_RETURN(auto keys, next("storage key list"));
    if (!keys.value->is_sequence()) return invalid_input("legacy storage key list is not a list");
    CKPT_TRY(resolve_storages(root.persistent_ids));
    CKPT_TRY(locate_legacy_storages(*keys.value, at));
    return torch_internal::collect_tensors(*root.value, uses_, read_, ckpt_, root.end - root_begin);
  }

  // Raw storages follow the key list: per key an 8-byte element count, then the elements.
  Status locate_legacy_storages(const Value& keys, std::uint64_t at) {
    std::vector<bool> located(ckpt_.storages.size(), false);
    for (const auto& k : keys.items()) {
      auto key = k->as_string();
      if (!key) return invalid_input("legacy storage key list holds a non-string");
      auto it = by_key_.find(std::string(*key));
      if (it == by_key_.end())
        return invalid_input("legacy storage '" + std::string(*key) + "' is never referenced");
      StorageRecord& s = ckpt_.storages[it->second];
      if (!range_fits(at, 8, bytes_.size()))
        return invalid_input("legacy storage '" + s.key + "': element count at offset " +
                             std::to_string(at) + " lies past the end of the file (truncated?)");
      std::uint64_t numel = 0;
      for (int b = 0; b < 8; ++b) {
        std::size_t k8 =
            ckpt_.big_endian ? static_cast<std::size_t>(b) : 7 - static_cast<std::size_t>(b);
        numel = (numel << 8) | static_cast<std::uint8_t>(bytes_[at + k8]);
      }
      std::uint64_t nbytes = 0;
      if (__builtin_mul_overflow(numel, element_size(s.dtype), &nbytes) || nbytes != s.nbytes)
        return invalid_input("legacy storage '" + s.key + "' holds " + std::to_string(numel) +
                             " elements, but its persistent id says " +
                             std::to_string(s.nbytes / element_size(s.dtype)));
      s.file_offset = at + 8;
      if (!range_fits(s.file_offset, s.nbytes, bytes_.size()))
        return invalid_input("legacy storage '" + s.key + "' (" + std::to_string(s.nbytes) +
                             " bytes at offset " + std::to_string(s.file_offset) +
                             ") runs past the end of the file (" + std::to_string(bytes_.size()) +
                             " bytes; truncated?)");
      located[it->second] = true;
      at = s.file_offset + s.nbytes;
    }
    for (const auto& [index, view] : legacy_views_) {
      const StorageRecord& root = ckpt_.storages[view.root];
      StorageRecord& s = ckpt_.storages[index];
      if (!located[view.root])
        return invalid_input("legacy storage '" + root.key + "' has no data");
      std::uint64_t begin = 0;
      if (__builtin_mul_overflow(view.offset, element_size(root.dtype), &begin) ||
          !range_fits(begin, s.nbytes, root.nbytes))
        return invalid_input("legacy storage view '" + s.key + "' reaches past storage '" +
                             root.key + "'");
      s.file_offset = root.file_offset + begin;
      located[index] = true;
    }
    for (std::size_t i = 0; i < located.size(); ++i)
      if (!located[i])
        return invalid_input("legacy storage '" + ckpt_.storages[i].key +
                             "' is missing from the storage key list");
    return {};
  }

  // ---- storages --------------------------------------------------------------------------------
  Status resolve_storages(std::span<const Value* const> persistent_ids) {
    uses_.reserve(persistent_ids.size());
    for (const Value* pid : persistent_ids) {
      auto id = parse_storage_id(*pid->args, storage_classes_);
      if (!id.ok()) return id.error();
      if (!id->has_value()) continue;
      CKPT_ASSIGN_OR_RETURN(std::size_t index, storage_for(**id));
      uses_[pid] = StorageUse{index, (*id)->dtype};
    }
    return {};
  }

  Result<std::size_t> storage_for(const StorageId& id) {
    if (id.view) return legacy_view(id);
    std::size_t* numbered = numbered_storage(id.key);
    if (numbered && *numbered != SIZE_MAX) return *numbered;
    if (!numbered) {
      auto found = by_key_.find(id.key);
      if (found != by_key_.end()) return found->second;
    }
    StorageRecord s;
    s.key = id.key;
    s.dtype = id.dtype;
    if (__builtin_mul_overflow(id.numel, element_size(id.dtype), &s.nbytes))
      return invalid_input("storage '" + id.key + "': element count overflows");
    if (archive_) {
      record_name_.assign(prefix_).append("data/").append(id.key);
      const std::string& name = record_name_;
      const zip::Entry* e =
          numbered ? numbered_records_[numbered - numbered_storages_.data()] : archive_->find(name);
      if (!e) return invalid_input("storage '" + id.key + "': record " + name + " is missing");
      if (!e->is_stored()) CKPT_TRY(archive_->stored(name));  // its error
      if (e->size != s.nbytes)
        return invalid_input("storage '" + id.key + "': record " + name + " holds " +
                             std::to_string(e->size) + " bytes, but its persistent id says " +
                             std::to_string(id.numel) + " " + std::string(torch_name(id.dtype)) +
                             " elements (" + std::to_string(s.nbytes) + " bytes)");
      s.file_offset = e->data_offset;
      // torch.save(..., compute_crc32=False) writes 0: no checksum to check.
      if (e->crc32 != 0 && e->size > 0) s.crc32 = e->crc32;
    }
    ckpt_.storages.push_back(std::move(s));
    if (numbered)
      *numbered = ckpt_.storages.size() - 1;
    else
      by_key_.emplace(id.key, ckpt_.storages.size() - 1);
    return ckpt_.storages.size() - 1;
  }

  // torch.save keys a zip file's storages 0, 1, 2, ... (records data/0, data/1, ...): tables by
  // number replace two hash lookups per storage, of which a large model's rank file has tens of
  // thousands. Built from the archive's records; other keys go through by_key_ and find().
  void number_records() {
    const std::string data = prefix_ + "data/";
    const auto& entries = archive_->entries();
    numbered_records_.assign(entries.size(), nullptr);
    for (const zip::Entry& e : entries)
      if (e.name.starts_with(data))
        if (auto n = record_number(std::string_view(e.name).substr(data.size()));
            n && *n < entries.size() && !numbered_records_[*n])
          numbered_records_[*n] = &e;
    numbered_storages_.assign(entries.size(), SIZE_MAX);
  }

  // The canonical decimal form of a number below 10^9 ("0", "17"; not "017" or "+1"), else none.
  static std::optional<std::size_t> record_number(std::string_view key) {
    if (key.empty() || key.size() > 9 || (key.size() > 1 && key[0] == '0')) return std::nullopt;
    std::size_t n = 0;
    for (char c : key) {
      if (c < '0' || c > '9') return std::nullopt;
      n = n * 10 + static_cast<std::size_t>(c - '0');
    }
    return n;
  }

  // The storage slot of a numbered record's key (SIZE_MAX until made), or nullptr.
  std::size_t* numbered_storage(const std::string& key) {
    if (!archive_) return nullptr;
    auto n = record_number(key);
    if (!n || *n >= numbered_records_.size() || !numbered_records_[*n]) return nullptr;
    return &numbered_storages_[*n];
  }

  // Legacy storage views: (view_key, offset, size) slices of the root storage `key`.
  struct LegacyView {
    std::size_t root = 0;
    std::uint64_t offset = 0;
  };

  Result<std::size_t> legacy_view(const StorageId& id) {
    const auto& v = id.view;
    if (!v->is(Kind::kTuple) || v->items().size() != 3)
      return invalid_input("storage '" + id.key + "': malformed view metadata");
    auto view_key = v->items()[0]->as_string();
    auto offset = v->items()[1]->as_int();
    auto size = v->items()[2]->as_int();
    if (!view_key || !offset || !size || *offset < 0 || *size < 0)
      return invalid_input("storage '" + id.key + "': malformed view metadata");
    StorageId root_id = id;
    root_id.view = nullptr;
    CKPT_ASSIGN_OR_RETURN(std::size_t root, storage_for(root_id));
    std::string key = std::string(*view_key);
    auto found = by_key_.find(key);
    if (found != by_key_.end()) return found->second;
    StorageRecord s;
    s.key = key;
    s.dtype = id.dtype;
    if (__builtin_mul_overflow(static_cast<std::uint64_t>(*size), element_size(id.dtype),
                               &s.nbytes))
      return invalid_input("storage view '" + key + "': size overflows");
    ckpt_.storages.push_back(std::move(s));
    std::size_t index = ckpt_.storages.size() - 1;
    by_key_.emplace(key, index);
    legacy_views_.emplace_back(index, LegacyView{root, static_cast<std::uint64_t>(*offset)});
    return index;
  }

  InputFile file_;
  TorchReadOptions options_;
  zip::ReadAt read_;
  std::span<const std::byte> bytes_;  // legacy format only
  TorchCheckpoint ckpt_;
  std::optional<zip::Archive> archive_;  // zip format, until finish()
  std::vector<std::byte> pickle_;        // data.pkl, from prepare() to finish()
  std::string prefix_;
  std::string record_name_;
  std::unordered_map<std::string, std::size_t> by_key_;
  std::vector<const zip::Entry*> numbered_records_;  // record data/<n>, by n (number_records)
  std::vector<std::size_t> numbered_storages_;       // its storage index, SIZE_MAX if none yet
  std::unordered_map<const Value*, DType> storage_classes_;
  std::vector<std::pair<std::size_t, LegacyView>> legacy_views_;
  StorageUses uses_;
};

namespace {

Error naming_file(const Error& error, const std::filesystem::path& path) {
  // Zip and read errors already name the file.
  if (error.message.rfind(path.string() + ":", 0) == 0) return error;
  return error.with_context(path.string());
}

}  // namespace

PendingTorchFile::PendingTorchFile(std::unique_ptr<Reader> reader) : reader_(std::move(reader)) {}
PendingTorchFile::PendingTorchFile(PendingTorchFile&&) noexcept = default;
PendingTorchFile& PendingTorchFile::operator=(PendingTorchFile&&) noexcept = default;
PendingTorchFile::~PendingTorchFile() = default;

Result<PendingTorchFile> PendingTorchFile::open(const std::filesystem::path& path,
                                                const TorchReadOptions& options) {
  CKPT_ASSIGN_OR_RETURN(InputFile file, InputFile::open(path));
  auto reader = std::make_unique<Reader>(std::move(file), path, options);
  Status status = reader->prepare();
  if (!status.ok()) return naming_file(status.error(), path);
  return PendingTorchFile(std::move(reader));
}

Result<TorchCheckpoint> PendingTorchFile::read(std::shared_ptr<pickle::BlockPool> pool) && {
  Status status = reader_->finish(std::move(pool));
  if (!status.ok()) return naming_file(status.error(), reader_->path());
  return reader_->take();
}

Result<TorchCheckpoint> read_torch_file(const std::filesystem::path& path) {
  CKPT_ASSIGN_OR_RETURN(auto pending, PendingTorchFile::open(path));
  return std::move(pending).read();
}

std::string to_string(const Placement& p) {
  switch (p.kind) {
    case Placement::Kind::kShard:
      return "Shard(" + std::to_string(p.dim) + ")";
    case Placement::Kind::kReplicate:
      return "Replicate()";
    case Placement::Kind::kPartial:
      return "Partial(" + p.reduce_op + ")";
    case Placement::Kind::kStridedShard:
      return "_StridedShard(dim=" + std::to_string(p.dim) +
             ", split_factor=" + std::to_string(p.split_factor) + ")";
    case Placement::Kind::kOther:
      break;
  }
  return p.class_name.empty() ? "an unknown placement" : p.class_name;
}

TensorRef TorchCheckpoint::ref(std::size_t i, std::size_t input) const {
  const TorchTensor& t = tensors[i];
  return tensor_ref(t, storages[t.storage], big_endian, input);
}

TensorRef tensor_ref(const TorchTensor& t, const StorageRecord& s, bool big_endian,
                     std::size_t input) {
  TensorRef r;
  r.input = input;
  r.storage_begin = s.file_offset;
  r.storage_nbytes = s.nbytes;
  r.dtype = t.dtype;
  r.shape = t.shape;
  r.strides = t.strides;
  r.offset = t.storage_offset;
  r.byteswap = big_endian;
  r.has_crc32 = s.crc32.has_value();
  r.crc32 = s.crc32.value_or(0);
  return r;
}

}  // namespace ckptstream
