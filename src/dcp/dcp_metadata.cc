#include "dcp/dcp_metadata.h"

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

Status read_state_dict_metadata(const ValuePtr& sdm, Metadata& out) {
  if (!sdm || !sdm->is(Kind::kDict))
    return invalid_input("state_dict_metadata is " + describe(sdm) + ", not a dict");
  for (const auto& [key, value] : sdm->entries()) {
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
      return unsupported("'" + std::string(*fqn) + "': unknown storage metadata " +
                         describe(value));
    }
  }
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

Status read_storage_data(const ValuePtr& sd, Metadata& out) {
  if (!sd || !sd->is(Kind::kDict))
    return invalid_input("storage_data is " + describe(sd) + ", not a dict");
  for (const auto& [key, value] : sd->entries()) {
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
    if (!out.storage.emplace(std::move(item), std::move(info)).second)
      return invalid_input(what + " appears twice");
  }
  return {};
}

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

}  // namespace

const StorageInfo* Metadata::find(const std::string& fqn,
                                  const std::optional<Shape>& offsets) const {
  auto it = storage.find(ItemKey{fqn, offsets});
  return it == storage.end() ? nullptr : &it->second;
}

Result<Metadata> parse_metadata(std::span<const std::byte> bytes, const std::string& label) {
  auto parsed = [&]() -> Result<Metadata> {
    CKPT_ASSIGN_OR_RETURN(auto unpickled, pickle::unpickle(bytes));
    const ValuePtr root = unpickled.value.get();
    if (!root || !root->is(Kind::kObject) || !root->attr("state_dict_metadata"))
      return invalid_input("not a DCP Metadata pickle (the pickled object is " + describe(root) +
                           ")");
    Metadata out;
    out.class_name = root->class_name();
    CKPT_TRY(read_state_dict_metadata(root->attr("state_dict_metadata"), out));
    CKPT_TRY(read_storage_data(root->attr("storage_data"), out));
    read_planner_data(root->attr("planner_data"), out);
    if (auto v = root->attr("version"))
      if (auto s = v->as_string()) out.version = std::string(*s);
    return out;
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
