// Reading safetensors headers and index files: untrusted bytes are parsed once, every length and
// offset is checked with overflow-safe arithmetic, in the order and with the rules of the Rust
// reference reader (safetensors/src/tensor.rs: read_metadata, Metadata::validate).
#include <simdjson.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <unordered_set>

#include "safetensors/safetensors.h"

namespace ckptstream::safetensors {
namespace {

constexpr std::uint64_t kLengthPrefix = 8;

// A tensor entry as the header states it; `shape` is the header's (logical) shape.
struct HeaderEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

std::string in_quotes(std::string_view name) {
  return "'" + std::string(name) + "'";
}

std::string shape_text(const std::vector<std::uint64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

std::string offsets_text(std::uint64_t begin, std::uint64_t end) {
  return "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// Bits per element as safetensors counts them: F4 packs two values in a byte.
std::uint64_t element_bits(DType dtype) {
  return dtype == DType::kF4E2M1FNx2 ? 4 : 8 * element_size(dtype);
}

class HeaderParser {
 public:
  explicit HeaderParser(const InputFile& file) : file_(file) {}

  Result<FileHeader> parse();

 private:
  Error file_error(const std::string& what) const {
    return invalid_input(file_.path().string() + ": " + what);
  }
  Error tensor_error(std::string_view name, const std::string& what) const {
    return invalid_input(file_.path().string() + ": tensor " + in_quotes(name) + ": " + what);
  }

  Result<std::uint64_t> read_length() const;
  Status parse_json(const simdjson::padded_string& json, FileHeader& header,
                    std::vector<HeaderEntry>& entries) const;
  Status parse_metadata(simdjson::dom::element value, FileHeader& header) const;
  Result<HeaderEntry> parse_entry(std::string_view name, simdjson::dom::element value) const;
  Result<std::vector<std::uint64_t>> parse_uints(std::string_view name, std::string_view field,
                                                 simdjson::dom::element value) const;
  Status validate(std::vector<HeaderEntry>& entries, std::uint64_t data_start) const;
  Result<TensorEntry> to_tensor_entry(HeaderEntry entry) const;

  const InputFile& file_;
};

Result<std::uint64_t> HeaderParser::read_length() const {
  if (file_.size() < kLengthPrefix) {
    return file_error("not a safetensors file: " + std::to_string(file_.size()) +
                      " bytes, too short for the 8-byte header length");
  }
  std::array<std::byte, kLengthPrefix> prefix{};
  CKPT_TRY(file_.read_at(0, prefix));
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < kLengthPrefix; ++i)
    n |= static_cast<std::uint64_t>(prefix[i]) << (8 * i);
  // Checked before anything is allocated: a forged length must not cost memory.
  if (n > kMaxHeaderSize) {
    return file_error("header length " + std::to_string(n) + " exceeds the limit of " +
                      std::to_string(kMaxHeaderSize) + " bytes");
  }
  if (!range_fits(kLengthPrefix, n, file_.size())) {
    return file_error("header length " + std::to_string(n) + " runs past the end of the file (" +
                      std::to_string(file_.size()) + " bytes)");
  }
  return n;
}

Result<FileHeader> HeaderParser::parse() {
  CKPT_ASSIGN_OR_RETURN(std::uint64_t n, read_length());
  simdjson::padded_string json(static_cast<std::size_t>(n));
  if (json.data() == nullptr) return file_error("cannot allocate " + std::to_string(n) + " bytes");
  CKPT_TRY(file_.read_at(kLengthPrefix,
                         std::as_writable_bytes(std::span<char>(json.data(), json.size()))));

  FileHeader header;
  header.data_start = kLengthPrefix + n;
  std::vector<HeaderEntry> entries;
  CKPT_TRY(parse_json(json, header, entries));
  CKPT_TRY(validate(entries, header.data_start));
  header.tensors.reserve(entries.size());
  for (auto& entry : entries) {
    CKPT_ASSIGN_OR_RETURN(auto tensor, to_tensor_entry(std::move(entry)));
    header.tensors.push_back(std::move(tensor));
  }
  return header;
}

Status HeaderParser::parse_json(const simdjson::padded_string& json, FileHeader& header,
                                std::vector<HeaderEntry>& entries) const {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  auto error = parser.parse(json).get(root);
  if (error == simdjson::UTF8_ERROR) return file_error("header is not valid UTF-8");
  if (error)
    return file_error(std::string("header is not valid JSON: ") + simdjson::error_message(error));
  simdjson::dom::object object;
  if (root.get_object().get(object)) return file_error("header is not a JSON object");

  std::unordered_set<std::string_view> names;
  for (auto field : object) {
    if (!names.insert(field.key).second) {
      return file_error("duplicate tensor name " + in_quotes(field.key) + " in the header");
    }
    if (field.key == "__metadata__") {
      CKPT_TRY(parse_metadata(field.value, header));
      continue;
    }
    CKPT_ASSIGN_OR_RETURN(auto entry, parse_entry(field.key, field.value));
    entries.push_back(std::move(entry));
  }
  return {};
}

Status HeaderParser::parse_metadata(simdjson::dom::element value, FileHeader& header) const {
  if (value.is_null()) return {};  // serde reads null as an absent Option
  simdjson::dom::object object;
  if (value.get_object().get(object)) {
    return file_error("__metadata__ must be an object mapping strings to strings");
  }
  for (auto field : object) {
    std::string_view text;
    if (field.value.get_string().get(text)) {
      return file_error("__metadata__ must map strings to strings, but " + in_quotes(field.key) +
                        " is not a string");
    }
    header.metadata.insert_or_assign(std::string(field.key), std::string(text));
  }
  return {};
}

Result<std::vector<std::uint64_t>> HeaderParser::parse_uints(std::string_view name,
                                                             std::string_view field,
                                                             simdjson::dom::element value) const {
  simdjson::dom::array array;
  if (value.get_array().get(array)) {
    return tensor_error(name, std::string(field) + " must be an array of non-negative integers");
  }
  std::vector<std::uint64_t> numbers;
  for (auto item : array) {
    std::uint64_t number = 0;
    if (item.get_uint64().get(number)) {
      return tensor_error(name, std::string(field) + " entries must be non-negative integers");
    }
    numbers.push_back(number);
  }
  return numbers;
}

Result<HeaderEntry> HeaderParser::parse_entry(std::string_view name,
                                              simdjson::dom::element value) const {
  simdjson::dom::object object;
  if (value.get_object().get(object)) return tensor_error(name, "entry is not a JSON object");
  HeaderEntry entry;
  entry.name = std::string(name);
  std::optional<std::string_view> dtype_name;
  std::optional<std::vector<std::uint64_t>> shape, offsets;
  for (auto field : object) {
    // Unknown fields are ignored, as serde does without deny_unknown_fields.
    if (field.key == "dtype") {
      if (dtype_name) return tensor_error(name, "duplicate field 'dtype'");
      std::string_view text;
      if (field.value.get_string().get(text)) return tensor_error(name, "dtype is not a string");
      dtype_name = text;
    } else if (field.key == "shape") {
      if (shape) return tensor_error(name, "duplicate field 'shape'");
      CKPT_ASSIGN_OR_RETURN(shape, parse_uints(name, "shape", field.value));
    } else if (field.key == "data_offsets") {
      if (offsets) return tensor_error(name, "duplicate field 'data_offsets'");
      CKPT_ASSIGN_OR_RETURN(offsets, parse_uints(name, "data_offsets", field.value));
    }
  }
  if (!dtype_name) return tensor_error(name, "missing field 'dtype'");
  if (!shape) return tensor_error(name, "missing field 'shape'");
  if (!offsets) return tensor_error(name, "missing field 'data_offsets'");
  if (offsets->size() != 2) return tensor_error(name, "data_offsets must hold exactly 2 integers");

  auto dtype = dtype_from_safetensors_name(*dtype_name);
  if (!dtype) {
    if (*dtype_name == "F6_E2M3" || *dtype_name == "F6_E3M2") {
      return unsupported(file_.path().string() + ": tensor " + in_quotes(name) + ": dtype " +
                         std::string(*dtype_name) + " is not supported");
    }
    return tensor_error(name, "unknown dtype " + in_quotes(*dtype_name));
  }
  entry.dtype = *dtype;
  entry.shape = std::move(*shape);
  entry.begin = (*offsets)[0];
  entry.end = (*offsets)[1];
  return entry;
}

Status HeaderParser::validate(std::vector<HeaderEntry>& entries, std::uint64_t data_start) const {
  // Readers sort by offsets: the order of JSON keys carries no meaning.
  std::stable_sort(entries.begin(), entries.end(), [](const HeaderEntry& a, const HeaderEntry& b) {
    return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
  });
  std::uint64_t expected_begin = 0;
  for (const auto& entry : entries) {
    if (entry.end < entry.begin) {
      return tensor_error(entry.name,
                          offsets_text(entry.begin, entry.end) + " end before they begin");
    }
    if (entry.begin != expected_begin) {
      std::string where = expected_begin == 0
                              ? "the data buffer starts at 0"
                              : "the previous tensor ends at " + std::to_string(expected_begin);
      return tensor_error(entry.name, offsets_text(entry.begin, entry.end) + " leave " +
                                          (entry.begin > expected_begin ? "a hole" : "an overlap") +
                                          ": " + where);
    }
    expected_begin = entry.end;

    std::uint64_t count = 1;
    bool overflow = false;
    for (auto dim : entry.shape) {
      if (dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        overflow = true;
      if (dim != 0 && count > std::numeric_limits<std::uint64_t>::max() / dim) overflow = true;
      count *= dim;
    }
    std::uint64_t bits = element_bits(entry.dtype);
    if (overflow || (count != 0 && bits > std::numeric_limits<std::uint64_t>::max() / count)) {
      return tensor_error(entry.name, "shape " + shape_text(entry.shape) + " overflows");
    }
    std::uint64_t nbits = count * bits;
    std::string dtype_name(dtype_info(entry.dtype).safetensors_name);
    if (nbits % 8 != 0) {
      return tensor_error(entry.name, "shape " + shape_text(entry.shape) + " of " + dtype_name +
                                          " does not fill a whole number of bytes");
    }
    if (entry.end - entry.begin != nbits / 8) {
      return tensor_error(entry.name, offsets_text(entry.begin, entry.end) + " hold " +
                                          std::to_string(entry.end - entry.begin) +
                                          " bytes but shape " + shape_text(entry.shape) + " of " +
                                          dtype_name + " needs " + std::to_string(nbits / 8));
    }
  }
  std::uint64_t available = file_.size() - data_start;  // data_start <= size, checked before
  if (expected_begin > available) {
    return file_error("incomplete data buffer: the tensors need " + std::to_string(expected_begin) +
                      " bytes after the header but the file holds " + std::to_string(available));
  }
  if (expected_begin < available) {
    return file_error(std::to_string(available - expected_begin) +
                      " trailing bytes after the last tensor (data ends at " +
                      std::to_string(data_start + expected_begin) + ", file size " +
                      std::to_string(file_.size()) + ")");
  }
  return {};
}

// Our shapes are those of torch storages: for F4, the header's logical shape has the last
// dimension doubled (two values per byte of torch.float4_e2m1fn_x2).
Result<TensorEntry> HeaderParser::to_tensor_entry(HeaderEntry entry) const {
  TensorEntry tensor;
  tensor.dtype = entry.dtype;
  tensor.data_begin = entry.begin;
  tensor.data_end = entry.end;
  if (entry.dtype == DType::kF4E2M1FNx2) {
    if (entry.shape.empty() || entry.shape.back() % 2 != 0) {
      return unsupported(file_.path().string() + ": tensor " + in_quotes(entry.name) +
                         ": F4 shape " + shape_text(entry.shape) +
                         " does not pack into float4_e2m1fn_x2 (its last dimension must be even)");
    }
    entry.shape.back() /= 2;
  }
  tensor.shape.reserve(entry.shape.size());
  for (auto dim : entry.shape) tensor.shape.push_back(static_cast<std::int64_t>(dim));
  tensor.name = std::move(entry.name);
  return tensor;
}

// A file name in the index may name a sub-folder but must stay inside the index's directory.
bool is_safe_relative_path(std::string_view name) {
  if (name.empty() || name.front() == '/' || name.find('\0') != std::string_view::npos)
    return false;
  std::size_t start = 0;
  while (start <= name.size()) {
    auto slash = name.find('/', start);
    auto part = name.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (part == "..") return false;
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return true;
}

}  // namespace

Result<FileHeader> read_header(const InputFile& file) {
  return HeaderParser(file).parse();
}

Result<Index> read_index(const std::filesystem::path& path) {
  CKPT_ASSIGN_OR_RETURN(auto file, InputFile::open(path));
  const std::string where = path.string() + ": ";
  auto fail = [&](const std::string& what) { return invalid_input(where + what); };
  simdjson::padded_string json(static_cast<std::size_t>(file.size()));
  if (json.data() == nullptr)
    return fail("cannot allocate " + std::to_string(file.size()) + " bytes");
  CKPT_TRY(file.read_at(0, std::as_writable_bytes(std::span<char>(json.data(), json.size()))));

  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (auto error = parser.parse(json).get(root)) {
    return fail(std::string("not valid JSON: ") + simdjson::error_message(error));
  }
  simdjson::dom::object object;
  if (root.get_object().get(object)) return fail("the index is not a JSON object");

  Index index;
  simdjson::dom::element metadata;
  if (object["metadata"].get(metadata) == simdjson::SUCCESS && !metadata.is_null()) {
    simdjson::dom::object fields;
    if (metadata.get_object().get(fields)) return fail("\"metadata\" is not an object");
    simdjson::dom::element total;
    if (fields["total_size"].get(total) == simdjson::SUCCESS) {
      double approximate = 0;
      if (total.get_uint64().get(index.total_size) != simdjson::SUCCESS) {
        // Some writers emit a float; accept it only when it is a whole number of bytes.
        if (total.get_double().get(approximate) || approximate < 0 || approximate >= 0x1p64 ||
            approximate != static_cast<double>(static_cast<std::uint64_t>(approximate))) {
          return fail("metadata.total_size is not a non-negative integer");
        }
        index.total_size = static_cast<std::uint64_t>(approximate);
      }
    }
  }
  simdjson::dom::element weight_map;
  if (object["weight_map"].get(weight_map)) return fail("missing \"weight_map\"");
  simdjson::dom::object entries;
  if (weight_map.get_object().get(entries)) return fail("\"weight_map\" is not an object");
  std::unordered_set<std::string_view> names;
  for (auto field : entries) {
    std::string_view file_name;
    if (field.value.get_string().get(file_name)) {
      return fail("weight_map: tensor '" + std::string(field.key) + "' does not map to a string");
    }
    if (!names.insert(field.key).second) {
      return fail("weight_map: duplicate tensor '" + std::string(field.key) + "'");
    }
    if (!is_safe_relative_path(file_name)) {
      return fail("weight_map: tensor '" + std::string(field.key) + "' maps to '" +
                  std::string(file_name) + "', which is not a file inside the index's directory");
    }
    index.weight_map.emplace_back(std::string(field.key), std::string(file_name));
  }
  return index;
}

}  // namespace ckptstream::safetensors
