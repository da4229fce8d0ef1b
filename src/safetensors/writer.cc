// Planning safetensors output: huggingface_hub's shard split, the reference writer's tensor order
// and header bytes, and transformers' index file.
#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <limits>
#include <map>
#include <unordered_set>

#include "core/json_text.h"
#include "safetensors/safetensors.h"

namespace ckptstream::safetensors {
namespace {

constexpr std::uint64_t kU64Max = std::numeric_limits<std::uint64_t>::max();

bool is_python_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && is_python_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_python_space(text.back())) text.remove_suffix(1);
  return text;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

struct SizeUnit {
  std::string_view name;
  std::uint64_t multiplier;
};
// huggingface_hub's SIZE_UNITS are decimal; the binary ones are ours.
constexpr std::array<SizeUnit, 9> kSizeUnits = {{
    {"B", 1},
    {"KB", 1'000},
    {"MB", 1'000'000},
    {"GB", 1'000'000'000},
    {"TB", 1'000'000'000'000},
    {"KiB", 1ull << 10},
    {"MiB", 1ull << 20},
    {"GiB", 1ull << 30},
    {"TiB", 1ull << 40},
}};

// Checks what the header and the size arithmetic need of one tensor, and returns its size.
Result<std::uint64_t> checked_size(const LogicalTensor& tensor) {
  auto fail = [&](std::string what) {
    return invalid_input("tensor '" + tensor.name + "': " + what);
  };
  if (!is_valid_utf8(tensor.name)) return fail("the name is not valid UTF-8");
  // The header would hold two "__metadata__" keys, which every safetensors reader rejects.
  if (tensor.name == "__metadata__")
    return fail("safetensors reserves this name for the header's metadata; rename the tensor");
  const auto& info = dtype_info(tensor.dtype);
  if (info.safetensors_rank < 0) {
    return unsupported("tensor '" + tensor.name + "': dtype " + std::string(info.torch_name) +
                       " has no safetensors code");
  }
  if (tensor.dtype == DType::kF4E2M1FNx2 && tensor.shape.empty()) {
    return unsupported("tensor '" + tensor.name +
                       "': a 0-d float4_e2m1fn_x2 tensor has no F4 shape");
  }
  std::uint64_t count = 1;
  for (auto dim : tensor.shape) {
    if (dim < 0) return fail("negative dimension in its shape");
    // F4 doubles the last dimension in the header: keep that in range too.
    auto d = static_cast<std::uint64_t>(dim);
    if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max() / 2) ||
        (d != 0 && count > kU64Max / d)) {
      return fail("its shape overflows");
    }
    count *= d;
  }
  if (count != 0 && info.element_size > kU64Max / count) return fail("its byte size overflows");
  return nbytes(tensor);
}

// huggingface_hub's split_state_dict_into_shards_factory (serialization/_base.py, read at
// ee0a451), in state-dict order:
//  - a tensor larger than max_shard_size is appended at once as a shard of its own; the shard
//    being filled stays open, so it ends up *after* that big one ([a, BIG, b] -> [BIG], [a, b]);
//  - otherwise, if current + size > max_shard_size the current shard is closed (it is never
//    empty then, since size <= max) and a new one started; the tensor joins the current shard;
//  - a zero-size tensor always joins the current shard; the last shard is kept if non-empty;
//  - tensors sharing a storage are counted once, with the storage's size, and later put in the
//    first one's shard. Ours share storage only when they are views of one parameter of the
//    saved model (LogicalTensor::shard_group); that storage's size is the sum of its views.
std::vector<std::vector<std::size_t>> split_into_shards(const std::vector<LogicalTensor>& tensors,
                                                        const std::vector<std::uint64_t>& sizes,
                                                        std::uint64_t max_shard_size) {
  std::map<std::string_view, std::size_t> leader;  // group -> its first tensor
  std::vector<std::uint64_t> counted = sizes;      // a leader counts its whole group
  std::vector<std::vector<std::size_t>> members(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].shard_group.empty()) continue;
    auto [it, first] = leader.emplace(tensors[i].shard_group, i);
    if (first) continue;
    counted[it->second] += sizes[i];
    counted[i] = 0;
    members[it->second].push_back(i);
  }
  auto is_follower = [&](std::size_t i) {
    return !tensors[i].shard_group.empty() && leader.at(tensors[i].shard_group) != i;
  };

  std::vector<std::vector<std::size_t>> shards;
  std::vector<std::size_t> current;
  std::uint64_t current_size = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (is_follower(i)) continue;
    if (counted[i] > max_shard_size) {
      shards.push_back({i});
      continue;
    }
    if (current_size + counted[i] > max_shard_size) {  // no overflow: both are <= max
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(i);
    current_size += counted[i];
  }
  if (!current.empty()) shards.push_back(std::move(current));
  for (auto& shard : shards) {
    std::size_t leaders = shard.size();
    for (std::size_t k = 0; k < leaders; ++k)
      shard.insert(shard.end(), members[shard[k]].begin(), members[shard[k]].end());
  }
  return shards;
}

std::string shard_file_name(std::size_t index, std::size_t count) {
  if (count == 1) return "model.safetensors";
  char name[96];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

// transformers: json.dumps({"metadata": {"total_size": T}, "weight_map": {...}}, indent=2,
// sort_keys=True) + "\n".
std::string build_index_json(const std::vector<OutputFile>& files, std::uint64_t total_size) {
  std::vector<std::pair<std::string_view, std::string_view>> weight_map;
  for (const auto& file : files)
    for (const auto& placed : file.tensors) weight_map.emplace_back(placed.tensor.name, file.name);
  // Python sorts str keys by code point, which is the bytewise order of their UTF-8.
  std::sort(weight_map.begin(), weight_map.end());
  std::string json = "{\n  \"metadata\": {\n    \"total_size\": " + std::to_string(total_size) +
                     "\n  },\n  \"weight_map\": {";
  for (std::size_t i = 0; i < weight_map.size(); ++i) {
    json += i ? ",\n    " : "\n    ";
    append_python_json_string(json, weight_map[i].first);
    json += ": ";
    append_python_json_string(json, weight_map[i].second);
  }
  json += weight_map.empty() ? "}\n}\n" : "\n  }\n}\n";
  return json;
}

}  // namespace

Result<std::uint64_t> parse_size(std::string_view text) {
  auto fail = [&] {
    return usage_error("invalid size '" + std::string(text) +
                       "': expected a number of bytes, optionally with a unit (KB, MB, GB, TB "
                       "are powers of 1000; KiB, MiB, GiB, TiB powers of 1024)");
  };
  std::string_view rest = trim(text);
  std::size_t unit_start = rest.size();
  while (unit_start > 0 && std::isalpha(static_cast<unsigned char>(rest[unit_start - 1])))
    --unit_start;
  std::string_view unit_name = rest.substr(unit_start);
  std::string_view number = trim(rest.substr(0, unit_start));

  std::uint64_t multiplier = 1;
  if (!unit_name.empty()) {
    auto unit = std::find_if(kSizeUnits.begin(), kSizeUnits.end(),
                             [&](const SizeUnit& u) { return iequals(u.name, unit_name); });
    if (unit == kSizeUnits.end()) return fail();
    multiplier = unit->multiplier;
  }
  auto dot = number.find('.');
  std::string_view whole = number.substr(0, dot);
  std::string_view fraction = dot == std::string_view::npos ? "" : number.substr(dot + 1);
  auto all_digits = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (whole.size() + fraction.size() == 0 || !all_digits(whole) || !all_digits(fraction)) {
    return fail();
  }
  if (dot == std::string_view::npos) {
    std::uint64_t value = 0;
    auto [end, error] = std::from_chars(whole.data(), whole.data() + whole.size(), value);
    if (error != std::errc() || end != whole.data() + whole.size()) return fail();
    if (value != 0 && multiplier > kU64Max / value) return fail();
    return value * multiplier;
  }
  // A fraction: int(float(value) * multiplier), exactly as huggingface_hub computes it.
  double value = 0;
  auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (error != std::errc() || end != number.data() + number.size()) return fail();
  double bytes = value * static_cast<double>(multiplier);
  if (!(bytes < 0x1p64)) return fail();
  return static_cast<std::uint64_t>(bytes);
}

Result<std::uint64_t> parse_max_shard_size(std::string_view text) {
  CKPT_ASSIGN_OR_RETURN(std::uint64_t size, parse_size(text));
  if (size == 0)
    return usage_error("--max-shard-size must be at least 1 byte (got '" + std::string(text) +
                       "')");
  return size;
}

std::string build_header(const std::vector<PlacedTensor>& tensors) {
  std::string json = R"({"__metadata__":{"format":"pt"})";
  for (const auto& placed : tensors) {
    const auto& tensor = placed.tensor;
    json += ',';
    append_serde_json_string(json, tensor.name);
    json += R"(:{"dtype":")";
    json += dtype_info(tensor.dtype).safetensors_name;
    json += R"(","shape":[)";
    Shape shape = header_shape(tensor);
    for (std::size_t i = 0; i < shape.size(); ++i) {
      if (i) json += ',';
      json += std::to_string(shape[i]);
    }
    json += R"(],"data_offsets":[)" + std::to_string(placed.data_begin) + ',' +
            std::to_string(placed.data_end) + "]}";
  }
  json += '}';
  json.append((8 - json.size() % 8) % 8, ' ');

  std::string header(8, '\0');
  for (std::size_t i = 0; i < 8; ++i)
    header[i] = static_cast<char>((static_cast<std::uint64_t>(json.size()) >> (8 * i)) & 0xFF);
  return header + json;
}

Status plan_output(std::vector<LogicalTensor> tensors, const OutputOptions& options, Plan& plan) {
  std::vector<std::uint64_t> sizes;
  sizes.reserve(tensors.size());
  std::unordered_set<std::string_view> names;
  std::uint64_t total_size = 0;
  for (const auto& tensor : tensors) {
    if (!names.insert(tensor.name).second) {
      return invalid_input("duplicate tensor name '" + tensor.name + "' in the output");
    }
    CKPT_ASSIGN_OR_RETURN(std::uint64_t size, checked_size(tensor));
    if (size > kU64Max - total_size) return invalid_input("the total output size overflows");
    total_size += size;
    sizes.push_back(size);
  }

  auto shards = split_into_shards(tensors, sizes, options.max_shard_size);
  if (shards.empty()) shards.emplace_back();  // no tensor: still one (empty) model.safetensors

  std::vector<OutputFile> files(shards.size());
  for (std::size_t s = 0; s < shards.size(); ++s) {
    auto& order = shards[s];
    // The reference writer's order: dtype descending in safetensors' enum, then name bytewise.
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      int rank_a = dtype_info(tensors[a].dtype).safetensors_rank;
      int rank_b = dtype_info(tensors[b].dtype).safetensors_rank;
      if (rank_a != rank_b) return rank_a > rank_b;
      return tensors[a].name < tensors[b].name;
    });
    OutputFile& file = files[s];
    file.name = shard_file_name(s, shards.size());
    std::uint64_t offset = 0;
    for (std::size_t i : order) {
      file.tensors.push_back(PlacedTensor{std::move(tensors[i]), offset, offset + sizes[i]});
      offset += sizes[i];
    }
    file.header = build_header(file.tensors);
    if (file.header.size() - 8 > kMaxHeaderSize) {
      return unsupported(file.name + ": its header would be " +
                         std::to_string(file.header.size() - 8) +
                         " bytes, over safetensors' limit of " + std::to_string(kMaxHeaderSize) +
                         "; use a smaller maximum shard size");
    }
  }

  plan.index_json = files.size() > 1 ? build_index_json(files, total_size) : std::string();
  plan.files = std::move(files);
  plan.total_size = total_size;
  return {};
}

}  // namespace ckptstream::safetensors
