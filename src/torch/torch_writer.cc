#include "torch/torch_writer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "core/crc32.h"
#include "pickle/pickler.h"

namespace ckptstream {
namespace {

constexpr std::uint64_t kAlignment = 64;            // torch's default storage alignment
constexpr std::uint64_t kZip64Limit = 0xFFFFFFFFu;  // sizes/offsets >= this go to zip64 extras
constexpr std::uint32_t kLocalHeaderSig = 0x04034b50;
constexpr std::uint32_t kCentralHeaderSig = 0x02014b50;
constexpr std::uint32_t kDescriptorSig = 0x08074b50;
constexpr std::uint32_t kZip64EocdSig = 0x06064b50;
constexpr std::uint32_t kZip64LocatorSig = 0x07064b50;
constexpr std::uint32_t kEocdSig = 0x06054b50;
constexpr std::size_t kLocalHeaderSize = 30;
constexpr std::size_t kCentralHeaderSize = 46;
constexpr std::size_t kZip64EocdSize = 56;
constexpr std::size_t kZip64LocatorSize = 20;
constexpr std::size_t kEocdSize = 22;
constexpr std::size_t kSerializationIdSize = 40;

constexpr std::string_view kPickleRecord = "data.pkl";
constexpr std::string_view kByteorderRecord = "byteorder";
constexpr std::string_view kVersionRecord = "version";
constexpr std::string_view kSerializationIdRecord = ".data/serialization_id";
constexpr std::string_view kByteorder = "little";
constexpr std::string_view kVersion = "3\n";

inline std::uint32_t load_le32(const unsigned char* p) {
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
         std::uint32_t{p[3]} << 24;
}

// ---- little-endian byte building ---------------------------------------------------------------

void put16(std::string& out, std::uint64_t v) {
  out.push_back(static_cast<char>(v & 0xFF));
  out.push_back(static_cast<char>((v >> 8) & 0xFF));
}
void put32(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
std::uint32_t clamp32(std::uint64_t v) {
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(v, kZip64Limit));
}

// c10::hash_combine, which torch uses for the serialization id.
std::uint64_t hash_combine(std::uint64_t seed, std::uint64_t value) {
  return seed ^ (value + 0x9e3779b9u + (seed << 6) + (seed >> 2));
}

// The saved object as a tree: dicts whose entries are tensors or dicts, in insertion order.
struct DictNode {
  struct Entry {
    std::string key;
    std::size_t tensor = 0;           // when child is null
    std::unique_ptr<DictNode> child;  // a nested dict
  };
  std::vector<Entry> entries;
  std::unordered_map<std::string, std::size_t> index;
};

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80           ? 1
                    : (c >> 5) == 0x6  ? 2
                    : (c >> 4) == 0xE  ? 3
                    : (c >> 3) == 0x1E ? 4
                                       : 0;
    if (n == 0 || i + n > s.size()) return false;
    std::uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (std::size_t k = 1; k < n; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr std::uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

std::string key_label(const std::vector<std::string>& path) {
  std::string label;
  for (const auto& part : path) label += (label.empty() ? "" : "/") + part;
  return "'" + label + "'";
}

Result<DictNode> build_tree(const std::vector<TorchWriteTensor>& tensors) {
  DictNode root;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const auto& path = tensors[t].path;
    if (path.empty()) return invalid_input("tensor " + std::to_string(t) + " has an empty key");
    DictNode* node = &root;
    for (std::size_t depth = 0; depth < path.size(); ++depth) {
      const std::string& key = path[depth];
      if (!valid_utf8(key)) return invalid_input("key " + key_label(path) + " is not valid UTF-8");
      bool last = depth + 1 == path.size();
      auto it = node->index.find(key);
      if (it != node->index.end()) {
        DictNode::Entry& entry = node->entries[it->second];
        if (last || !entry.child)
          return invalid_input(
              "key " + key_label(path) +
              (last && !entry.child ? " appears twice" : " is both a tensor and a dict"));
        node = entry.child.get();
        continue;
      }
      node->index.emplace(key, node->entries.size());
      node->entries.push_back({key, t, last ? nullptr : std::make_unique<DictNode>()});
      node = node->entries.back().child.get();
    }
  }
  return root;
}

// Contiguous strides as torch computes them (a dimension of size 0 counts as 1).
Result<Shape> contiguous_strides(const Shape& shape) {
  Shape strides(shape.size(), 1);
  std::int64_t stride = 1;
  for (std::size_t d = shape.size(); d-- > 0;) {
    strides[d] = stride;
    std::int64_t dim = std::max<std::int64_t>(shape[d], 1);
    if (__builtin_mul_overflow(stride, dim, &stride)) return invalid_input("shape overflows");
  }
  return strides;
}

struct TensorFacts {
  std::uint64_t nbytes = 0;
  std::int64_t numel = 0;
  Shape strides;
};

Result<TensorFacts> tensor_facts(const TorchWriteTensor& tensor) {
  TensorFacts facts;
  facts.numel = 1;
  for (std::int64_t dim : tensor.shape) {
    if (dim < 0)
      return invalid_input("key " + key_label(tensor.path) + " has a negative dimension");
    if (__builtin_mul_overflow(facts.numel, dim, &facts.numel))
      return invalid_input("key " + key_label(tensor.path) + ": shape overflows");
  }
  std::int64_t nbytes = 0;
  if (__builtin_mul_overflow(facts.numel, static_cast<std::int64_t>(element_size(tensor.dtype)),
                             &nbytes))
    return invalid_input("key " + key_label(tensor.path) + ": size overflows");
  facts.nbytes = static_cast<std::uint64_t>(nbytes);
  CKPT_ASSIGN_OR_RETURN(facts.strides, contiguous_strides(tensor.shape));
  return facts;
}

bool is_quantized(DType dtype) {
  switch (dtype) {
    case DType::kQInt8:
    case DType::kQUInt8:
    case DType::kQInt32:
    case DType::kQUInt4x2:
    case DType::kQUInt2x4:
      return true;
    default:
      return false;
  }
}

class PickleBuilder {
 public:
  PickleBuilder(const std::vector<TorchWriteTensor>& tensors, const std::vector<TensorFacts>& facts)
      : tensors_(tensors), facts_(facts), keys_(tensors.size()) {}

  std::string build(const TorchObject& root) {
    p_.proto();
    object(root);
    p_.stop();
    return p_.take();
  }

  std::string build(const DictNode& root, bool ordered_dict) {
    p_.proto();
    if (ordered_dict) {
      p_.global("collections", "OrderedDict");
      p_.op(pickle::opcode::kEmptyTuple);
      p_.op(pickle::opcode::kReduce);
      p_.put();
    } else {
      p_.empty_dict();
    }
    items(root);
    p_.stop();
    return p_.take();
  }

  // Storage keys, per tensor, in the order the pickle met them.
  // Tensors a root object met more than once, or never (empty: each once).
  std::string reference_problem() const {
    for (std::size_t t = 0; t < keys_.size(); ++t)
      if (keys_[t].empty()) return "tensor " + std::to_string(t) + " is not in the saved object";
    return duplicate_;
  }

  std::vector<std::string> take_keys() { return std::move(keys_); }

 private:
  // pickle's _batch_setitems: batches of 1000, a batch of one is a lone SETITEM.
  void items(const DictNode& node) {
    constexpr std::size_t kBatch = 1000;
    const auto& entries = node.entries;
    for (std::size_t begin = 0; begin < entries.size(); begin += kBatch) {
      std::size_t n = std::min(kBatch, entries.size() - begin);
      if (n > 1) p_.mark();
      for (std::size_t i = begin; i < begin + n; ++i) {
        const auto& entry = entries[i];
        p_.string(entry.key, entry.key.size() == 1 ? "key:" + entry.key : std::string());
        if (entry.child) {
          p_.empty_dict();
          items(*entry.child);
        } else {
          tensor(entry.tensor);
        }
      }
      p_.op(n > 1 ? pickle::opcode::kSetItems : pickle::opcode::kSetItem);
    }
  }

  // CPython's save() for the kinds of TorchObject (protocol 2).
  void object(const TorchObject& o) {
    using K = TorchObject::Kind;
    switch (o.kind) {
      case K::kNone:
        p_.none();
        return;
      case K::kBool:
        p_.boolean(o.boolean);
        return;
      case K::kInt:
        p_.integer(o.integer);
        return;
      case K::kFloat:
        p_.floating(o.real);
        return;
      case K::kString:
        p_.string(o.text);
        return;
      case K::kGlobal: {
        auto space = o.text.find(' ');
        p_.global(o.text.substr(0, space),
                  space == std::string::npos ? "" : o.text.substr(space + 1));
        return;
      }
      case K::kTensor:
        if (o.tensor >= tensors_.size()) {
          duplicate_ = "a reference to tensor " + std::to_string(o.tensor) + " of " +
                       std::to_string(tensors_.size());
          p_.none();
          return;
        }
        if (!keys_[o.tensor].empty())
          duplicate_ = "tensor " + std::to_string(o.tensor) + " is met twice in the saved object";
        tensor(o.tensor);
        return;
      case K::kList: {
        p_.empty_list();
        std::size_t n = o.items.size();
        for (std::size_t begin = 0; begin < n; begin += 1000) {
          std::size_t count = std::min<std::size_t>(1000, n - begin);
          if (count > 1) p_.mark();
          for (std::size_t i = begin; i < begin + count; ++i) object(o.items[i]);
          p_.op(count > 1 ? pickle::opcode::kAppends : pickle::opcode::kAppend);
        }
        return;
      }
      case K::kOrderedDict:
        p_.global("collections", "OrderedDict");
        p_.op(pickle::opcode::kEmptyTuple);
        p_.op(pickle::opcode::kReduce);
        p_.put();
        entries(o);
        return;
      case K::kDict:
        p_.empty_dict();
        entries(o);
        return;
      case K::kNamespace:
        p_.global("argparse", "Namespace");
        p_.op(pickle::opcode::kEmptyTuple);
        p_.op(pickle::opcode::kNewObj);
        p_.put();
        p_.empty_dict();
        entries(o);
        p_.op(pickle::opcode::kBuild);
        return;
    }
  }

  void entries(const TorchObject& o) {
    std::size_t n = o.entries.size();
    for (std::size_t begin = 0; begin < n; begin += 1000) {
      std::size_t count = std::min<std::size_t>(1000, n - begin);
      if (count > 1) p_.mark();
      for (std::size_t i = begin; i < begin + count; ++i) {
        p_.string(o.entries[i].first);
        object(o.entries[i].second);
      }
      p_.op(count > 1 ? pickle::opcode::kSetItems : pickle::opcode::kSetItem);
    }
  }

  void tensor(std::size_t t) {
    const TorchWriteTensor& tensor = tensors_[t];
    const TensorFacts& facts = facts_[t];
    const DTypeInfo& info = dtype_info(tensor.dtype);
    bool typed = !info.storage_class.empty();
    std::string key = std::to_string(next_key_++);
    keys_[t] = key;

    p_.global("torch._utils", typed ? "_rebuild_tensor_v2" : "_rebuild_tensor_v3");
    p_.mark();
    // The persistent id ('storage', storage_type, key, location, numel).
    p_.mark();
    p_.string("storage", "storage");
    if (typed) {
      p_.global("torch", info.storage_class);
    } else {
      p_.global("torch.storage", "UntypedStorage");
    }
    p_.string(key);
    p_.string("cpu", "cpu");
    p_.integer(typed ? facts.numel : static_cast<std::int64_t>(facts.nbytes));
    p_.op(pickle::opcode::kTuple);
    p_.put();
    p_.op(pickle::opcode::kBinPersId);
    p_.integer(0);  // storage offset
    p_.int_tuple(tensor.shape);
    p_.int_tuple(facts.strides);
    p_.boolean(false);                        // requires_grad = False
    p_.global("collections", "OrderedDict");  // backward_hooks = OrderedDict()
    p_.op(pickle::opcode::kEmptyTuple);
    p_.op(pickle::opcode::kReduce);
    p_.put();
    if (!typed) p_.global("torch", info.torch_name);
    p_.op(pickle::opcode::kTuple);
    p_.put();
    p_.op(pickle::opcode::kReduce);
    p_.put();
  }

  const std::vector<TorchWriteTensor>& tensors_;
  const std::vector<TensorFacts>& facts_;
  std::vector<std::string> keys_;
  std::string duplicate_;
  std::size_t next_key_ = 0;
  pickle::Pickler p_;
};

// The name part of the serialization id: torch hashes the names it has written (without the
// prefix) with std::hash, iterating a std::unordered_set filled in write order. Using the same
// containers reproduces it wherever torch's standard library (libstdc++) is ours too.
std::uint64_t record_name_hash(const std::vector<TorchZipRecord>& records) {
  std::unordered_set<std::string> written;
  for (const auto& record : records)
    if (record.name != kSerializationIdRecord) written.insert(record.name);
  std::uint64_t combined = 0;
  for (const std::string& name : written)
    combined = hash_combine(combined, std::hash<std::string>{}(name));
  return combined;
}

}  // namespace

Result<std::string> torch_archive_name(const std::filesystem::path& target) {
  const std::string full = target.string();
  for (char c : full)
    if (static_cast<unsigned char>(c) >= 0x80) return std::string("archive");
  // torch's basename(): after the last '/' or '\\', before the last '.'.
  std::size_t start = full.find_last_of("/\\");
  start = start == std::string::npos ? 0 : start + 1;
  std::size_t dot = full.find_last_of('.');
  std::size_t end = dot != std::string::npos && dot >= start ? dot : full.size();
  std::string name = full.substr(start, end - start);
  if (name.empty())
    return usage_error(full + ": torch.save would refuse this file name (empty archive name)");
  return name;
}

std::uint64_t TorchZipRecord::descriptor_size() const {
  if (size == 0) return 0;
  return zip64_size || zip64_offset ? 24 : 16;
}

Result<TorchZipLayout> plan_torch_zip(const std::vector<TorchWriteTensor>& tensors,
                                      const TorchWriteOptions& options) {
  if (options.prefix.empty()) return usage_error("empty archive name");
  if (!valid_utf8(options.prefix)) return usage_error("archive name is not valid UTF-8");
  std::vector<TensorFacts> facts;
  facts.reserve(tensors.size());
  for (const auto& tensor : tensors) {
    if (is_quantized(tensor.dtype))
      return unsupported("key " + key_label(tensor.path) + ": cannot save quantized dtype " +
                         std::string(torch_name(tensor.dtype)));
    CKPT_ASSIGN_OR_RETURN(auto f, tensor_facts(tensor));
    facts.push_back(std::move(f));
  }
  TorchZipLayout layout;
  layout.prefix = options.prefix;
  layout.serialization_id = options.serialization_id;
  PickleBuilder builder(tensors, facts);
  if (options.root) {
    layout.pickle = builder.build(*options.root);
    if (auto problem = builder.reference_problem(); !problem.empty()) return invalid_input(problem);
  } else {
    CKPT_ASSIGN_OR_RETURN(DictNode root, build_tree(tensors));
    layout.pickle = builder.build(root, options.ordered_dict);
  }
  layout.tensor_key = builder.take_keys();

  // Record order of torch 2.6: data.pkl, byteorder, data/<keys in string order>, version, id.
  std::vector<std::pair<std::string, std::uint64_t>> records;  // name, size
  records.emplace_back(kPickleRecord, layout.pickle.size());
  records.emplace_back(kByteorderRecord, kByteorder.size());
  std::vector<std::size_t> by_key(tensors.size());
  for (std::size_t t = 0; t < tensors.size(); ++t) by_key[t] = t;
  std::sort(by_key.begin(), by_key.end(), [&](std::size_t a, std::size_t b) {
    return layout.tensor_key[a] < layout.tensor_key[b];
  });
  layout.tensor_record.resize(tensors.size());
  for (std::size_t t : by_key) {
    layout.tensor_record[t] = records.size();
    records.emplace_back("data/" + layout.tensor_key[t], facts[t].nbytes);
  }
  records.emplace_back(kVersionRecord, kVersion.size());
  if (options.serialization_id) records.emplace_back(kSerializationIdRecord, kSerializationIdSize);

  std::uint64_t cursor = 0;
  for (auto& [name, size] : records) {
    TorchZipRecord record;
    record.name = name;
    record.size = size;
    record.header_offset = cursor;
    record.zip64_size = size >= kZip64Limit;
    record.zip64_offset = cursor >= kZip64Limit;
    std::uint64_t full_name = layout.prefix.size() + 1 + name.size();
    if (full_name > 0xFFFF) return invalid_input("record name too long: " + name);
    std::uint64_t zip64_extra =
        record.zip64_size || record.zip64_offset
            ? 4 + (record.zip64_size ? 16 : 0) + (record.zip64_offset ? 8 : 0)
            : 0;
    std::uint64_t start = cursor + kLocalHeaderSize + full_name + zip64_extra + 4;
    std::uint64_t padding = (kAlignment - start % kAlignment) % kAlignment;
    record.local_extra_size = static_cast<std::uint16_t>(zip64_extra + 4 + padding);
    record.data_offset = start + padding;
    if (record.data_offset > std::numeric_limits<std::uint64_t>::max() - size - 24)
      return invalid_input("archive too large");
    cursor = record.end();
    layout.records.push_back(std::move(record));
  }
  layout.central_directory_offset = cursor;
  for (const auto& record : layout.records) {
    bool zip64 = record.zip64_size || record.zip64_offset;
    layout.central_directory_size +=
        kCentralHeaderSize + layout.prefix.size() + 1 + record.name.size() +
        (zip64 ? 4 + (record.zip64_size ? 16 : 0) + (record.zip64_offset ? 8 : 0) : 0);
  }
  layout.file_size = layout.central_directory_offset + layout.central_directory_size +
                     kZip64EocdSize + kZip64LocatorSize + kEocdSize;
  layout.name_hash = record_name_hash(layout.records);
  return layout;
}

std::string torch_zip_local_header(const TorchZipLayout& layout, const TorchZipRecord& record) {
  std::string full_name = layout.prefix + "/" + record.name;
  std::string out;
  put32(out, kLocalHeaderSig);
  put16(out, 0);                              // version needed
  put16(out, record.size ? 0x0808 : 0x0800);  // descriptor follows, UTF-8 names
  put16(out, 0);                              // STORED
  put16(out, 0);                              // time
  put16(out, 0);                              // date
  put32(out, 0);                              // crc (in the descriptor)
  put32(out, 0);                              // compressed size
  put32(out, 0);                              // uncompressed size
  put16(out, full_name.size());
  put16(out, record.local_extra_size);
  out += full_name;
  if (record.zip64_size || record.zip64_offset) {
    put16(out, 0x0001);
    put16(out, (record.zip64_size ? 16 : 0) + (record.zip64_offset ? 8 : 0));
    if (record.zip64_size) {
      put64(out, record.size);
      put64(out, 0);  // miniz writes the compressed size before it knows it
    }
    if (record.zip64_offset) put64(out, record.header_offset);
  }
  std::uint64_t padding = record.data_offset - record.header_offset - out.size() - 4;
  out += "FB";
  put16(out, padding);
  out.append(padding, 'Z');
  return out;
}

std::string torch_zip_central_entry(const TorchZipLayout& layout, const TorchZipRecord& record,
                                    std::uint32_t crc) {
  std::string full_name = layout.prefix + "/" + record.name;
  std::string extra;
  if (record.zip64_size || record.zip64_offset) {
    put16(extra, 0x0001);
    put16(extra, (record.zip64_size ? 16 : 0) + (record.zip64_offset ? 8 : 0));
    if (record.zip64_size) {
      put64(extra, record.size);
      put64(extra, record.size);
    }
    if (record.zip64_offset) put64(extra, record.header_offset);
  }
  std::string out;
  put32(out, kCentralHeaderSig);
  put16(out, 0);  // made by
  put16(out, 0);  // needed
  put16(out, record.size ? 0x0808 : 0x0800);
  put16(out, 0);  // STORED
  put16(out, 0);  // time
  put16(out, 0);  // date
  put32(out, crc);
  put32(out, clamp32(record.size));
  put32(out, clamp32(record.size));
  put16(out, full_name.size());
  put16(out, extra.size());
  put16(out, 0);  // comment
  put16(out, 0);  // disk
  put16(out, 0);  // internal attributes
  put32(out, 0);  // external attributes
  put32(out, clamp32(record.header_offset));
  out += full_name;
  out += extra;
  return out;
}

// ---- the writer --------------------------------------------------------------------------------

namespace {

std::string zip_trailer(const TorchZipLayout& layout_) {
  const std::uint64_t entries = layout_.records.size();
  const std::uint64_t cd_offset = layout_.central_directory_offset;
  const std::uint64_t cd_size = layout_.central_directory_size;
  std::string out;
  put32(out, kZip64EocdSig);
  put64(out, kZip64EocdSize - 12);  // size of the rest of the record
  put16(out, 0x031E);               // made by
  put16(out, 0x002D);               // needed
  put32(out, 0);                    // this disk
  put32(out, 0);                    // central directory disk
  put64(out, entries);
  put64(out, entries);
  put64(out, cd_size);
  put64(out, cd_offset);
  put32(out, kZip64LocatorSig);
  put32(out, 0);                    // disk of the zip64 EOCD
  put64(out, cd_offset + cd_size);  // its offset
  put32(out, 1);                    // disks
  put32(out, kEocdSig);
  put16(out, 0);
  put16(out, 0);
  put16(out, std::min<std::uint64_t>(entries, 0xFFFF));
  put16(out, std::min<std::uint64_t>(entries, 0xFFFF));
  put32(out, clamp32(cd_size));
  put32(out, clamp32(cd_offset));
  put16(out, 0);  // comment length
  return out;
}

std::string_view constant_payload(const TorchZipLayout& layout, const TorchZipRecord& record) {
  if (record.name == kPickleRecord) return layout.pickle;
  if (record.name == kByteorderRecord) return kByteorder;
  if (record.name == kVersionRecord) return kVersion;
  return {};
}

std::string descriptor(const TorchZipRecord& record, std::uint32_t crc) {
  std::string out;
  if (record.size == 0) return out;  // torch writes none for empty records
  put32(out, kDescriptorSig);
  put32(out, crc);
  if (record.descriptor_size() == 24) {
    put64(out, record.size);
    put64(out, record.size);
  } else {
    put32(out, record.size);
    put32(out, record.size);
  }
  return out;
}

}  // namespace

TorchZipFraming::TorchZipFraming(TorchZipLayout layout) : layout_(std::move(layout)) {}

std::size_t TorchZipFraming::tensors() const {
  return layout_.tensor_record.size();
}

std::string TorchZipFraming::header() const {
  std::string out;
  const auto& records = layout_.records;
  std::size_t r = 0;
  for (; r < kFirstTensorRecord; ++r) out += constant_record(r);
  if (tensors() > 0) return out + torch_zip_local_header(layout_, records[r]);
  return out + tail({});
}

std::string TorchZipFraming::after_tensor(std::size_t index,
                                          std::span<const WrittenTensor> written) const {
  const std::size_t r = kFirstTensorRecord + index;
  std::string out = descriptor(layout_.records[r], written[index].crc32);
  if (index + 1 < tensors()) return out + torch_zip_local_header(layout_, layout_.records[r + 1]);
  return out + tail(written);
}

std::uint64_t TorchZipFraming::tail_bytes() const {
  const auto& last = layout_.records[kFirstTensorRecord + tensors() - 1];
  return layout_.file_size - (last.data_offset + last.size);
}

std::string TorchZipFraming::constant_record(std::size_t r) const {
  const TorchZipRecord& record = layout_.records[r];
  std::string_view payload = constant_payload(layout_, record);
  return torch_zip_local_header(layout_, record) + std::string(payload) +
         descriptor(record, crc32_update(0, std::as_bytes(std::span(payload))));
}

// Records after the tensors (version, the serialization id), the central directory and the
// end records.
std::string TorchZipFraming::tail(std::span<const WrittenTensor> written) const {
  const auto& records = layout_.records;
  std::vector<std::uint32_t> crc(records.size(), 0);
  // The CRC half of the serialization id: torch combines the CRC of every data descriptor it
  // writes, in file order, and also (a quirk of its write callback) bytes 4..8 of any record
  // whose data starts with the descriptor signature.
  std::uint64_t combined = 0;
  std::size_t id_record = records.size();
  for (std::size_t r = 0; r < records.size(); ++r) {
    const TorchZipRecord& record = records[r];
    if (record.name == kSerializationIdRecord) {
      id_record = r;
      continue;
    }
    std::array<unsigned char, 8> head = {};
    bool is_tensor = r >= kFirstTensorRecord && r < kFirstTensorRecord + tensors();
    if (is_tensor) {
      const WrittenTensor& t = written[r - kFirstTensorRecord];
      crc[r] = t.crc32;
      std::memcpy(head.data(), t.head.data(), head.size());
    } else {
      std::string_view payload = constant_payload(layout_, record);
      crc[r] = crc32_update(0, std::as_bytes(std::span(payload)));
      std::memcpy(head.data(), payload.data(), std::min(head.size(), payload.size()));
    }
    if (record.size >= 8 && load_le32(head.data()) == kDescriptorSig)
      combined = hash_combine(combined, load_le32(head.data() + 4));
    if (record.size > 0) combined = hash_combine(combined, crc[r]);
  }
  std::string out;
  for (std::size_t r = kFirstTensorRecord + tensors(); r < records.size(); ++r) {
    const TorchZipRecord& record = records[r];
    if (r != id_record) {
      out += constant_record(r);
      continue;
    }
    char id[kSerializationIdSize + 1];
    std::snprintf(id, sizeof id, "%020llu%020llu",
                  static_cast<unsigned long long>(layout_.name_hash),
                  static_cast<unsigned long long>(combined));
    crc[r] = crc32_update(0, std::as_bytes(std::span<const char>(id, kSerializationIdSize)));
    out += torch_zip_local_header(layout_, record) + std::string(id, kSerializationIdSize) +
           descriptor(record, crc[r]);
  }
  for (std::size_t r = 0; r < records.size(); ++r)
    out += torch_zip_central_entry(layout_, records[r], crc[r]);
  return out + zip_trailer(layout_);
}

std::string torch_zip_bytes(const TorchZipLayout& layout) {
  return TorchZipFraming(layout).header();
}

TorchObject TorchObject::of(bool value) {
  return {.kind = Kind::kBool, .boolean = value};
}
TorchObject TorchObject::of(std::int64_t value) {
  return {.kind = Kind::kInt, .integer = value};
}
TorchObject TorchObject::of(double value) {
  return {.kind = Kind::kFloat, .real = value};
}
TorchObject TorchObject::of(std::string value) {
  return {.kind = Kind::kString, .text = std::move(value)};
}
TorchObject TorchObject::global(std::string module_and_name) {
  return {.kind = Kind::kGlobal, .text = std::move(module_and_name)};
}
TorchObject TorchObject::tensor_at(std::size_t index) {
  return {.kind = Kind::kTensor, .tensor = index};
}
TorchObject TorchObject::container(Kind kind) {
  return {.kind = kind};
}
TorchObject& TorchObject::set(std::string key, TorchObject value) {
  entries.emplace_back(std::move(key), std::move(value));
  return entries.back().second;
}

Result<OutputFile> torch_zip_output_file(std::string name, TorchZipLayout layout,
                                         std::vector<LogicalTensor> tensors) {
  if (tensors.size() != layout.tensor_record.size())
    return invalid_input(name + ": " + std::to_string(tensors.size()) +
                         " tensors for a layout of " + std::to_string(layout.tensor_record.size()));
  auto framing = std::make_shared<TorchZipFraming>(std::move(layout));
  const TorchZipLayout& l = framing->layout();
  OutputFile file;
  file.name = std::move(name);
  file.header = framing->header();
  std::vector<std::size_t> order(tensors.size());  // file order: by record
  for (std::size_t t = 0; t < order.size(); ++t) order[t] = t;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return l.tensor_record[a] < l.tensor_record[b]; });
  for (std::size_t t : order) {
    const TorchZipRecord& record = l.records[l.tensor_record[t]];
    if (nbytes(tensors[t]) != record.size)
      return invalid_input(file.name + ": tensor '" + tensors[t].name + "' holds " +
                           std::to_string(nbytes(tensors[t])) + " bytes, its record " +
                           std::to_string(record.size));
    std::uint64_t begin = record.data_offset - file.header.size();
    file.tensors.push_back(PlacedTensor{std::move(tensors[t]), begin, begin + record.size});
  }
  if (!file.tensors.empty()) {
    file.tail_bytes = framing->tail_bytes();
    file.framing = std::move(framing);
  }
  return file;
}

}  // namespace ckptstream
