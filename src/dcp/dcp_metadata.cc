#include "dcp/dcp_metadata.h"

#include <unordered_map>
#include <unordered_set>

#include "io/input_file.h"
#include "pickle/unpickler.h"
#include "pickle/value.h"

namespace ckptstream::dcp {
namespace {

using pickle::Kind;
using pickle::Value;
using pickle::ValuePtr;

std::string describe(const ValuePtr& v) {
  if (!v) return "nothing";
  if (v->is(Kind::kObject) && !v->callable_name().empty()) return v->callable_name();
  return pickle::kind_name(v->kind);
}

// An Object whose class has this final name (any module: the paths moved between versions).
bool is_instance(const ValuePtr& v, std::string_view class_name) {
  return v && v->is(Kind::kObject) && v->class_name() == class_name;
}

Result<Shape> int_tuple(const ValuePtr& v, const std::string& what) {
  if (!v || !v->is_sequence()) return invalid_input(what + " is " + describe(v) + ", not a tuple");
  Shape out;
  out.reserve(v->items().size());
  for (const auto& x : v->items()) {
    auto i = x->as_int();
    if (!i || *i < 0) return invalid_input(what + " holds " + describe(x) + ", not a size");
    out.push_back(*i);
  }
  return out;
}

Result<std::uint64_t> size_field(const Value& obj, const char* field, const std::string& what) {
  ValuePtr v = obj.attr(field);
  auto i = v ? v->as_int() : std::nullopt;
  if (!i || *i < 0) return invalid_input(what + ": " + field + " is " + describe(v));
  return static_cast<std::uint64_t>(*i);
}

// TensorProperties pickles its __getstate__ 5-tuple (dtype, layout, requires_grad, memory-format
// enum, pin_memory); a plain dataclass __dict__ is accepted too.
Result<DType> properties_dtype(const ValuePtr& props, const std::string& fqn) {
  if (!is_instance(props, "TensorProperties"))
    return invalid_input("'" + fqn + "': properties is " + describe(props) +
                         ", not TensorProperties");
  ValuePtr dtype = nullptr;
  if (props->state && props->state->is(Kind::kTuple) && !props->state->items().empty() &&
      props->state->items()[0]->is(Kind::kGlobal))
    dtype = props->state->items()[0];
  else
    dtype = props->attr("dtype");
  if (!dtype || !dtype->is(Kind::kGlobal) || dtype->module() != "torch")
    return invalid_input("'" + fqn + "': TensorProperties has no torch.<dtype> (found " +
                         describe(dtype) + ")");
  auto d = dtype_from_torch_name(dtype->name());
  if (!d) return unsupported("'" + fqn + "': unknown dtype torch." + std::string(dtype->name()));
  return *d;
}

Result<StateDictEntry> tensor_entry(const std::string& fqn, const Value& md) {
  StateDictEntry e;
  e.fqn = fqn;
  e.kind = StateDictEntry::Kind::kTensor;
  CKPT_ASSIGN_OR_RETURN(e.dtype, properties_dtype(md.attr("properties"), fqn));
  CKPT_ASSIGN_OR_RETURN(e.size, int_tuple(md.attr("size"), "'" + fqn + "': size"));
  ValuePtr chunks = md.attr("chunks");
  if (!chunks || !chunks->is_sequence())
    return invalid_input("'" + fqn + "': chunks is " + describe(chunks) + ", not a list");
  for (const auto& c : chunks->items()) {
    if (!is_instance(c, "ChunkStorageMetadata"))
      return invalid_input("'" + fqn + "': a chunk is " + describe(c));
    ChunkMeta chunk;
    CKPT_ASSIGN_OR_RETURN(chunk.offsets,
                          int_tuple(c->attr("offsets"), "'" + fqn + "' chunk offsets"));
    CKPT_ASSIGN_OR_RETURN(chunk.sizes, int_tuple(c->attr("sizes"), "'" + fqn + "' chunk sizes"));
    e.chunks.push_back(std::move(chunk));
  }
  return e;
}

// One item of state_dict_metadata: fqn -> Tensor/BytesStorageMetadata.
Status read_state_dict_item(const ValuePtr& key, const ValuePtr& value, Metadata& out) {
  auto fqn = key->as_string();
  if (!fqn) return invalid_input("state_dict_metadata has a " + describe(key) + " key");
  if (is_instance(value, "TensorStorageMetadata")) {
    CKPT_ASSIGN_OR_RETURN(auto entry, tensor_entry(std::string(*fqn), *value));
    out.entries.push_back(std::move(entry));
  } else if (is_instance(value, "BytesStorageMetadata")) {
    StateDictEntry entry;
    entry.fqn = std::string(*fqn);
    entry.kind = StateDictEntry::Kind::kBytes;
    out.entries.push_back(std::move(entry));
  } else {
    return unsupported("'" + std::string(*fqn) + "': unknown storage metadata " + describe(value));
  }
  return {};
}

Status read_state_dict_metadata(const ValuePtr& sdm, Metadata& out) {
  if (!sdm || !sdm->is(Kind::kDict))
    return invalid_input("state_dict_metadata is " + describe(sdm) + ", not a dict");
  for (const auto& [key, value] : sdm->entries()) CKPT_TRY(read_state_dict_item(key, value, out));
  return {};
}

Result<std::vector<std::string>> transform_list(const ValuePtr& v, const std::string& what) {
  std::vector<std::string> out;
  if (!v || v->is(Kind::kNone)) return out;
  if (!v->is_sequence())
    return invalid_input(what + ": transform_descriptors is " + describe(v) + ", not a list");
  for (const auto& d : v->items()) {
    auto s = d->as_string();
    if (!s) return invalid_input(what + ": a transform descriptor is " + describe(d));
    out.emplace_back(*s);
  }
  return out;
}

// Puts storage_data's items with the entries and chunks they locate (read before them).
class StorageTable {
 public:
  explicit StorageTable(Metadata& out) : out_(out) {}

  Status add(ItemKey key, StorageInfo info, const std::string& what) {
    if (!indexed_) {  // every entry is read by now (the streamed reader checks the order)
      for (std::size_t i = 0; i < out_.entries.size(); ++i)
        index_.emplace(out_.entries[i].fqn, i);  // fqns are distinct (dict keys)
      hints_.assign(out_.entries.size(), 0);
      indexed_ = true;
    }
    if (std::optional<StorageInfo>* at = slot(key)) {
      if (*at) return invalid_input(what + " appears twice");
      *at = std::move(info);
      return {};
    }
    if (!out_.other_storage.emplace(std::move(key), std::move(info)).second)
      return invalid_input(what + " appears twice");
    return {};
  }

 private:
  std::optional<StorageInfo>* slot(const ItemKey& key) {
    auto it = index_.find(key.fqn);
    if (it == index_.end()) return nullptr;
    StateDictEntry& e = out_.entries[it->second];
    if (!key.offsets) return &e.storage;
    // storage_data lists an entry's chunks in their order: start after the last one found.
    std::size_t& hint = hints_[it->second];
    for (std::size_t n = 0; n < e.chunks.size(); ++n) {
      std::size_t c = (hint + n) % e.chunks.size();
      if (e.chunks[c].offsets == *key.offsets) {
        hint = c + 1;
        return &e.chunks[c].storage;
      }
    }
    return nullptr;
  }

  Metadata& out_;
  std::unordered_map<std::string, std::size_t> index_;  // fqn -> entry
  std::vector<std::size_t> hints_;                      // per entry: where to look first
  bool indexed_ = false;
};

// One item of storage_data: MetadataIndex -> _StorageInfo.
Status read_storage_item(const ValuePtr& key, const ValuePtr& value, StorageTable& table) {
  {
    if (!is_instance(key, "MetadataIndex"))
      return invalid_input("storage_data has a " + describe(key) + " key, not MetadataIndex");
    ValuePtr fqn_value = key->attr("fqn");
    auto fqn = fqn_value ? fqn_value->as_string() : std::nullopt;
    if (!fqn) return invalid_input("a MetadataIndex has no fqn string");
    ItemKey item{std::string(*fqn), std::nullopt};
    std::string what = "storage_data['" + item.fqn + "'";
    ValuePtr offset = key->attr("offset");  // absent or None for byte items
    if (offset && !offset->is(Kind::kNone)) {
      CKPT_ASSIGN_OR_RETURN(item.offsets, int_tuple(offset, what + "] offset"));
      std::string text;
      for (auto o : *item.offsets) text += (text.empty() ? "" : ", ") + std::to_string(o);
      what += " at (" + text + ")";
    }
    what += "]";
    if (!is_instance(value, "_StorageInfo"))
      return unsupported(what + " is " + describe(value) + ", not _StorageInfo");
    StorageInfo info;
    ValuePtr path = value->attr("relative_path");
    auto path_text = path ? path->as_string() : std::nullopt;
    if (!path_text || path_text->empty())
      return invalid_input(what + ": relative_path is " + describe(path));
    info.relative_path = std::string(*path_text);
    CKPT_ASSIGN_OR_RETURN(info.offset, size_field(*value, "offset", what));
    CKPT_ASSIGN_OR_RETURN(info.length, size_field(*value, "length", what));
    CKPT_ASSIGN_OR_RETURN(info.transforms,
                          transform_list(value->attr("transform_descriptors"), what));
    CKPT_TRY(table.add(std::move(item), std::move(info), what));
  }
  return {};
}

Status read_storage_data(const ValuePtr& sd, Metadata& out) {
  if (!sd || !sd->is(Kind::kDict))
    return invalid_input("storage_data is " + describe(sd) + ", not a dict");
  StorageTable table(out);
  for (const auto& [key, value] : sd->entries()) CKPT_TRY(read_storage_item(key, value, table));
  return {};
}

// The two large dicts of a Metadata's state, converted as the unpickler makes their items and
// freed batch by batch (pickle::RootItemSink): a DeepSeek-V3-sized .metadata (141 MB, 725 000
// chunks) unpickles into 6.9 million nodes, 700 MB, when built whole.
class StreamedDicts : public pickle::RootItemSink {
 public:
  static constexpr std::string_view kStateDict = "state_dict_metadata";
  static constexpr std::string_view kStorage = "storage_data";

  explicit StreamedDicts(Metadata& out) : out_(out), table_(out) {}

  Status items(std::span<const ValuePtr>, std::span<const Value* const>) override {
    return invalid_input("the pickled object is a dict, not a Metadata object");
  }
  void released(std::span<const Value* const>) override {}
  bool streams_nested(std::string_view key) override {
    return key == kStateDict || key == kStorage;
  }
  Status nested_items(std::string_view key, const Value* dict,
                      std::span<const ValuePtr> keys_and_values) override {
    const Value*& streamed = key == kStateDict ? state_dict_ : storage_;
    if (streamed && streamed != dict) return invalid_input(std::string(key) + " appears twice");
    streamed = dict;
    // Storage items are put with the entries they locate: every entry must come first.
    if (key == kStorage && !state_dict_)
      return invalid_input("storage_data comes before state_dict_metadata");
    if (key == kStateDict && storage_)
      return invalid_input("state_dict_metadata goes on after storage_data");
    for (std::size_t i = 0; i + 1 < keys_and_values.size(); i += 2) {
      if (key == kStorage) {
        CKPT_TRY(read_storage_item(keys_and_values[i], keys_and_values[i + 1], table_));
        continue;
      }
      CKPT_TRY(read_state_dict_item(keys_and_values[i], keys_and_values[i + 1], out_));
      // A key set twice: a dict keeps its first position and last value, which the entries
      // handed over already cannot follow (the caller then reads the pickle whole).
      if (!fqns_.insert(out_.entries.back().fqn).second)
        return invalid_input("'" + out_.entries.back().fqn + "' appears twice");
    }
    return {};
  }

  const Value* state_dict() const { return state_dict_; }
  const Value* storage() const { return storage_; }

 private:
  Metadata& out_;
  StorageTable table_;
  const Value* state_dict_ = nullptr;  // the dicts streamed (empty), once seen
  const Value* storage_ = nullptr;
  std::unordered_set<std::string> fqns_;
};

void read_planner_data(const ValuePtr& pd, Metadata& out) {
  if (!pd || !pd->is(Kind::kDict)) return;  // None (1.13) or a custom planner's data
  for (const auto& [key, value] : pd->entries()) {
    auto fqn = key->as_string();
    if (!fqn || !value->is_sequence()) continue;
    std::vector<std::string> path;
    for (const auto& element : value->items()) {
      if (auto s = element->as_string())
        path.emplace_back(*s);
      else if (element->is(Kind::kInt) || element->is(Kind::kBigInt))
        path.push_back(element->int_decimal());
    }
    out.planner_paths.emplace_back(std::string(*fqn), std::move(path));
  }
}

// The Metadata of an unpickled graph; `streamed` (when given) holds the entries and storage
// items of the dicts that were streamed, which the graph holds empty.
Result<Metadata> read_root(const ValuePtr& root, Metadata out, const StreamedDicts* streamed) {
  if (!root || !root->is(Kind::kObject) || !root->attr("state_dict_metadata"))
    return invalid_input("not a DCP Metadata pickle (the pickled object is " + describe(root) +
                         ")");
  out.class_name = root->class_name();
  // A streamed dict must be the attribute it was the value of, and have stayed empty.
  auto own = [&](const char* name, const Value* dict) {
    return dict && root->attr(name) == dict && dict->entries().empty();
  };
  if (streamed && streamed->state_dict() && !own("state_dict_metadata", streamed->state_dict()))
    return invalid_input("state_dict_metadata was streamed from another dict");
  if (streamed && streamed->storage() && !own("storage_data", streamed->storage()))
    return invalid_input("storage_data was streamed from another dict");
  if (!streamed || !streamed->state_dict()) {
    // Items streamed into storage_data precede these entries' reading: keep the order of a
    // whole read (entries, then storage) for its errors by reading whole instead.
    if (streamed && streamed->storage())
      return invalid_input("storage_data was streamed before state_dict_metadata");
    CKPT_TRY(read_state_dict_metadata(root->attr("state_dict_metadata"), out));
  }
  if (!streamed || !streamed->storage())
    CKPT_TRY(read_storage_data(root->attr("storage_data"), out));
  read_planner_data(root->attr("planner_data"), out);
  if (auto v = root->attr("version"))
    if (auto s = v->as_string()) out.version = std::string(*s);
  return out;
}

}  // namespace

const StorageInfo* Metadata::find(const std::string& fqn,
                                  const std::optional<Shape>& offsets) const {
  for (const auto& e : entries) {
    if (e.fqn != fqn) continue;
    if (!offsets) return e.storage ? &*e.storage : nullptr;
    for (const auto& c : e.chunks)
      if (c.offsets == *offsets) return c.storage ? &*c.storage : nullptr;
  }
  auto it = other_storage.find(ItemKey{fqn, offsets});
  return it == other_storage.end() ? nullptr : &it->second;
}

Result<Metadata> parse_metadata(std::span<const std::byte> bytes, const std::string& label,
                                bool stream) {
  if (stream) {
    Metadata out;
    StreamedDicts streamed(out);
    auto unpickled = pickle::unpickle_streaming(bytes, streamed);
    if (unpickled.ok()) {
      auto parsed = read_root(unpickled->value.get(), std::move(out), &streamed);
      if (parsed.ok()) {
        parsed->streamed_items = unpickled->streamed_items;
        return parsed;
      }
    }
  }
  // Anything unusual (a key set twice, a streamed dict fetched again, a damaged stream) is read
  // whole, so that results and errors are those of Python's reading of the pickle.
  auto parsed = [&]() -> Result<Metadata> {
    CKPT_ASSIGN_OR_RETURN(auto unpickled, pickle::unpickle(bytes));
    return read_root(unpickled.value.get(), Metadata(), nullptr);
  }();
  if (!parsed.ok()) return parsed.error().with_context(label);
  return parsed;
}

Result<Metadata> read_metadata(const std::filesystem::path& dir) {
  std::filesystem::path path = dir / ".metadata";
  CKPT_ASSIGN_OR_RETURN(InputFile file, InputFile::open(path));
  CKPT_ASSIGN_OR_RETURN(auto bytes, file.mapped());
  return parse_metadata(bytes, path.string());
}

}  // namespace ckptstream::dcp
