#include "verify/compare.h"

#include <fnmatch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <unordered_map>

#include "exec/dtype_convert.h"
#include "formats/hf_safetensors.h"
#include "io/input_file.h"
#include "safetensors/safetensors.h"

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// --- models on disk ----------------------------------------------------------------------------

struct ModelTensor {
  std::size_t file = 0;  // index into ModelDir::files
  safetensors::TensorEntry entry;
};

// The tensors of a model directory (or of one .safetensors file), file by file in file order.
struct ModelDir {
  std::vector<InputFile> files;
  std::vector<std::uint64_t> data_start;  // per file
  std::vector<ModelTensor> tensors;
  std::unordered_map<std::string_view, std::size_t> by_name;  // first tensor of each name
};

// Opens every file of the model at `path` (formats/hf_safetensors.h); differences within it (a
// name twice, an index that disagrees with the headers) go to `problems` prefixed with `role`.
Result<ModelDir> open_model(const fs::path& path, std::string_view role,
                            std::vector<std::string>& problems) {
  auto read = read_hf_safetensors(path);
  if (!read.ok()) return read.error().with_context(std::string(role));
  for (const auto& problem : read->problems) problems.push_back(std::string(role) + ": " + problem);
  ModelDir model;
  for (auto& file : read->files) {
    std::size_t at = model.files.size();
    for (auto& entry : file.header.tensors) model.tensors.push_back({at, std::move(entry)});
    model.data_start.push_back(file.header.data_start);
    model.files.push_back(std::move(file.file));
  }
  for (std::size_t i = 0; i < model.tensors.size(); ++i)
    model.by_name.emplace(model.tensors[i].entry.name, i);
  return model;
}

bool skipped(const std::string& name, const CompareOptions& options) {
  for (const auto& pattern : options.skip)
    if (::fnmatch(pattern.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

std::string dtype_text(DType dtype) {
  const auto& info = dtype_info(dtype);
  return std::string(info.safetensors_name.empty() ? info.torch_name : info.safetensors_name);
}

std::string number_text(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", value);
  return text;
}

// --- element values --------------------------------------------------------------------------

enum class ValueKind { kFloat, kInteger, kBytes };

ValueKind value_kind(DType dtype) {
  switch (dtype) {
    case DType::kF16:
    case DType::kBF16:
    case DType::kF32:
    case DType::kF64:
      return ValueKind::kFloat;
    case DType::kBool:
    case DType::kU8:
    case DType::kI8:
    case DType::kI16:
    case DType::kU16:
    case DType::kI32:
    case DType::kU32:
    case DType::kI64:
    case DType::kU64:
      return ValueKind::kInteger;
    default:
      return ValueKind::kBytes;
  }
}

template <class T>
double load_as_double(const std::byte* data) {
  T value;
  std::memcpy(&value, data, sizeof value);
  return static_cast<double>(value);
}

// Integer (and bool) elements as float64, for the differences only (they compare exactly).
void integers_to_double(DType dtype, const std::byte* src, double* dst, std::size_t count) {
  std::size_t size = element_size(dtype);
  for (std::size_t i = 0; i < count; ++i) {
    const std::byte* at = src + i * size;
    switch (dtype) {
      case DType::kBool:
      case DType::kU8:
        dst[i] = load_as_double<std::uint8_t>(at);
        break;
      case DType::kI8:
        dst[i] = load_as_double<std::int8_t>(at);
        break;
      case DType::kI16:
        dst[i] = load_as_double<std::int16_t>(at);
        break;
      case DType::kU16:
        dst[i] = load_as_double<std::uint16_t>(at);
        break;
      case DType::kI32:
        dst[i] = load_as_double<std::int32_t>(at);
        break;
      case DType::kU32:
        dst[i] = load_as_double<std::uint32_t>(at);
        break;
      case DType::kI64:
        dst[i] = load_as_double<std::int64_t>(at);
        break;
      default:
        dst[i] = load_as_double<std::uint64_t>(at);
        break;
    }
  }
}

// --- the comparator --------------------------------------------------------------------------

class Comparator {
 public:
  Comparator(const ModelDir& reference, const CompareOptions& options, CompareReport& report)
      : reference_(reference), options_(options), report_(report) {}

  void declare(const std::vector<CandidateTensor>& tensors);
  Status window(std::string_view name, std::uint64_t offset, std::span<const std::byte> bytes);
  void finish();

 private:
  struct State {
    const CandidateTensor* candidate = nullptr;
    const ModelTensor* reference = nullptr;  // set when the values are compared
    std::size_t comparison = 0;              // index into report_.tensors
    std::uint64_t nbytes = 0;
    std::uint64_t received = 0;
    std::array<std::byte, 16> carry{};  // a partial element between windows
    std::size_t carry_size = 0;
  };

  Status compare_elements(State& state, const std::byte* candidate, std::uint64_t first,
                          std::uint64_t count);
  void compare_chunk(State& state, const std::byte* candidate, const std::byte* reference,
                     std::uint64_t first, std::size_t count);
  State* find(std::string_view name);

  const ModelDir& reference_;
  const CompareOptions& options_;
  CompareReport& report_;
  std::vector<State> states_;
  std::unordered_map<std::string_view, std::size_t> by_name_;
  State* last_ = nullptr;
  std::uint64_t done_ = 0;
  std::uint64_t total_ = 0;
  std::vector<std::byte> reference_buffer_;
  std::vector<std::byte> cast_buffer_;
  std::vector<double> candidate_values_;
  std::vector<double> reference_values_;
};

void Comparator::declare(const std::vector<CandidateTensor>& tensors) {
  states_.reserve(tensors.size());
  std::set<std::string_view> candidate_names;
  for (const auto& tensor : tensors) {
    if (!by_name_.emplace(tensor.name, states_.size()).second) {
      report_.problems.push_back("candidate: " + tensor.name + " appears more than once");
      continue;
    }
    State state;
    state.candidate = &tensor;
    state.nbytes = static_cast<std::uint64_t>(numel(tensor.shape)) * element_size(tensor.dtype);
    total_ += state.nbytes;
    candidate_names.insert(tensor.name);
    states_.push_back(state);
  }
  for (std::size_t i = 0; i < reference_.tensors.size(); ++i) {
    const auto& name = reference_.tensors[i].entry.name;
    bool first_of_name = reference_.by_name.at(name) == i;
    if (first_of_name && !candidate_names.count(name) && !skipped(name, options_)) {
      report_.missing.push_back(name);
      report_.problems.push_back(name + ": in the reference, not in the candidate");
    }
  }
  for (auto& state : states_) {
    const auto& tensor = *state.candidate;
    if (skipped(tensor.name, options_)) {
      ++report_.tensors_skipped;
      continue;
    }
    auto found = reference_.by_name.find(tensor.name);
    if (found == reference_.by_name.end()) {
      report_.extra.push_back(tensor.name);
      report_.problems.push_back(tensor.name + ": in the candidate, not in the reference");
      continue;
    }
    const ModelTensor& reference = reference_.tensors[found->second];
    bool compare = true;
    if (reference.entry.shape != tensor.shape) {
      report_.problems.push_back(tensor.name + ": shape " + shape_text(tensor.shape) +
                                 ", the reference has " + shape_text(reference.entry.shape));
      compare = false;
    }
    DType want = reference.entry.dtype;
    bool castable = options_.cast_reference && value_kind(want) == ValueKind::kFloat &&
                    value_kind(tensor.dtype) == ValueKind::kFloat;
    if (want != tensor.dtype && !castable) {
      report_.problems.push_back(tensor.name + ": dtype " + dtype_text(tensor.dtype) +
                                 ", the reference has " + dtype_text(want));
      compare = false;
    }
    if (!compare) continue;
    state.reference = &reference;
    state.comparison = report_.tensors.size();
    TensorComparison comparison;
    comparison.name = tensor.name;
    comparison.dtype = tensor.dtype;
    comparison.reference_dtype = want;
    comparison.shape = tensor.shape;
    comparison.elements = static_cast<std::uint64_t>(numel(tensor.shape));
    report_.tensors.push_back(std::move(comparison));
  }
}

Comparator::State* Comparator::find(std::string_view name) {
  if (last_ && last_->candidate->name == name) return last_;
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return nullptr;
  return last_ = &states_[it->second];
}

Status Comparator::window(std::string_view name, std::uint64_t offset,
                          std::span<const std::byte> bytes) {
  State* state = find(name);
  if (!state) return invalid_input("candidate: bytes of an undeclared tensor " + std::string(name));
  if (offset != state->received || bytes.size() > state->nbytes - state->received)
    return invalid_input("candidate: " + std::string(name) + ": a window at byte " +
                         std::to_string(offset) + " (+" + std::to_string(bytes.size()) + ") but " +
                         std::to_string(state->received) + " of " + std::to_string(state->nbytes) +
                         " bytes came before");
  state->received += bytes.size();
  done_ += bytes.size();
  if (state->reference) {
    report_.bytes_compared += bytes.size();
    std::size_t size = element_size(state->candidate->dtype);
    if (state->carry_size) {  // complete the element split by the previous window
      std::size_t take = std::min(size - state->carry_size, bytes.size());
      std::memcpy(state->carry.data() + state->carry_size, bytes.data(), take);
      state->carry_size += take;
      bytes = bytes.subspan(take);
      if (state->carry_size == size) {
        std::uint64_t element = (state->received - bytes.size()) / size - 1;
        CKPT_TRY(compare_elements(*state, state->carry.data(), element, 1));
        state->carry_size = 0;
      }
    }
    std::uint64_t whole = bytes.size() / size;
    if (whole) {
      std::uint64_t first = (state->received - bytes.size()) / size;
      CKPT_TRY(compare_elements(*state, bytes.data(), first, whole));
    }
    std::size_t rest = bytes.size() - whole * size;
    std::memcpy(state->carry.data() + state->carry_size, bytes.data() + whole * size, rest);
    state->carry_size += rest;
  }
  if (options_.on_progress) options_.on_progress(done_, total_);
  return {};
}

Status Comparator::compare_elements(State& state, const std::byte* candidate, std::uint64_t first,
                                    std::uint64_t count) {
  const ModelTensor& reference = *state.reference;
  DType from = reference.entry.dtype;
  DType to = state.candidate->dtype;
  std::size_t from_size = element_size(from);
  std::size_t to_size = element_size(to);
  std::uint64_t chunk =
      std::max<std::uint64_t>(1, options_.buffer_bytes / std::max(from_size, to_size));
  const InputFile& file = reference_.files[reference.file];
  std::uint64_t base = reference_.data_start[reference.file] + reference.entry.data_begin;
  auto tensor_numel = static_cast<std::size_t>(numel(state.candidate->shape));
  for (std::uint64_t done = 0; done < count;) {
    auto n = static_cast<std::size_t>(std::min(chunk, count - done));
    std::uint64_t element = first + done;
    reference_buffer_.resize(std::max<std::size_t>(reference_buffer_.size(), n * from_size));
    CKPT_TRY(file.read_at(base + element * from_size,
                          std::span(reference_buffer_.data(), n * from_size)));
    file.drop_cache(base + element * from_size, n * from_size);
    const std::byte* expected = reference_buffer_.data();
    if (from != to) {
      cast_buffer_.resize(std::max<std::size_t>(cast_buffer_.size(), n * to_size));
      convert_elements_at(from, to, expected, cast_buffer_.data(), n,
                          static_cast<std::size_t>(element), tensor_numel);
      expected = cast_buffer_.data();
    }
    compare_chunk(state, candidate + done * to_size, expected, element, n);
    done += n;
  }
  return {};
}

// The element-wise rules of the header, on `count` elements of the candidate's dtype.
void Comparator::compare_chunk(State& state, const std::byte* candidate, const std::byte* reference,
                               std::uint64_t first, std::size_t count) {
  DType dtype = state.candidate->dtype;
  std::size_t size = element_size(dtype);
  if (std::memcmp(candidate, reference, count * size) == 0) return;  // the common case
  auto& result = report_.tensors[state.comparison];
  ValueKind kind = value_kind(dtype);
  bool tolerant = options_.atol > 0 || options_.rtol > 0;
  constexpr std::size_t kBlock = 4096;
  candidate_values_.resize(kBlock);
  reference_values_.resize(kBlock);
  for (std::size_t start = 0; start < count; start += kBlock) {
    std::size_t n = std::min(kBlock, count - start);
    const std::byte* a_bytes = candidate + start * size;
    const std::byte* b_bytes = reference + start * size;
    if (std::memcmp(a_bytes, b_bytes, n * size) == 0) continue;
    if (kind == ValueKind::kFloat) {
      convert_elements(dtype, DType::kF64, a_bytes,
                       reinterpret_cast<std::byte*>(candidate_values_.data()), n);
      convert_elements(dtype, DType::kF64, b_bytes,
                       reinterpret_cast<std::byte*>(reference_values_.data()), n);
    } else if (kind == ValueKind::kInteger) {
      integers_to_double(dtype, a_bytes, candidate_values_.data(), n);
      integers_to_double(dtype, b_bytes, reference_values_.data(), n);
    }
    for (std::size_t i = 0; i < n; ++i) {
      bool same_bytes = std::memcmp(a_bytes + i * size, b_bytes + i * size, size) == 0;
      bool equal = same_bytes;
      if (kind != ValueKind::kBytes) {
        double a = candidate_values_[i];
        double b = reference_values_[i];
        double abs_diff = 0;
        double rel_diff = 0;
        bool close = false;
        if (std::isnan(a) || std::isnan(b)) {
          close = std::isnan(a) && std::isnan(b);
          abs_diff = rel_diff = close ? 0 : kInfinity;
        } else if (std::isinf(a) || std::isinf(b)) {
          close = a == b;
          abs_diff = rel_diff = close ? 0 : kInfinity;
        } else {
          abs_diff = std::fabs(a - b);
          rel_diff = b != 0 ? abs_diff / std::fabs(b) : (abs_diff == 0 ? 0 : kInfinity);
          close = abs_diff <= options_.atol + options_.rtol * std::fabs(b);
        }
        if (tolerant && kind == ValueKind::kFloat) equal = close;
        result.max_abs_diff = std::max(result.max_abs_diff, abs_diff);
        result.max_rel_diff = std::max(result.max_rel_diff, rel_diff);
      }
      if (!equal) {
        if (result.mismatches == 0) result.first_mismatch = first + start + i;
        ++result.mismatches;
      }
    }
  }
}

// Worse: has mismatches and the other has none, or the same and a larger absolute difference.
bool worse(const TensorComparison& a, const TensorComparison& b) {
  if ((a.mismatches > 0) != (b.mismatches > 0)) return a.mismatches > 0;
  return a.max_abs_diff > b.max_abs_diff;
}

void Comparator::finish() {
  for (const auto& state : states_) {
    if (!state.reference) continue;
    ++report_.tensors_compared;
    const auto& name = state.candidate->name;
    if (state.received != state.nbytes) {
      report_.problems.push_back(name + ": the candidate produced " +
                                 std::to_string(state.received) + " of its " +
                                 std::to_string(state.nbytes) + " bytes");
      continue;
    }
    const auto& comparison = report_.tensors[state.comparison];
    if (comparison.mismatches > 0) report_.problems.push_back(describe(comparison));
  }
  for (const auto& comparison : report_.tensors) {
    bool differs = comparison.mismatches > 0 || comparison.max_abs_diff > 0;
    if (differs && (!report_.worst || worse(comparison, *report_.worst)))
      report_.worst = comparison;
  }
}

}  // namespace

std::string describe(const TensorComparison& comparison) {
  std::string text = comparison.name + ": ";
  if (comparison.mismatches == 0) {
    text += "equal";
    if (comparison.max_abs_diff > 0 || comparison.max_rel_diff > 0)
      text += " (max abs diff " + number_text(comparison.max_abs_diff) + ", max rel diff " +
              number_text(comparison.max_rel_diff) + ")";
    return text;
  }
  text += std::to_string(comparison.mismatches) + " of " + std::to_string(comparison.elements) +
          " elements differ (first at " + std::to_string(comparison.first_mismatch) + ")";
  if (value_kind(comparison.dtype) != ValueKind::kBytes)
    text += ", max abs diff " + number_text(comparison.max_abs_diff) + ", max rel diff " +
            number_text(comparison.max_rel_diff);
  return text;
}

Result<CompareReport> compare_stream(const std::vector<CandidateTensor>& tensors,
                                     const CandidateSource& source, const fs::path& reference,
                                     const CompareOptions& options) {
  CompareReport report;
  CKPT_ASSIGN_OR_RETURN(auto model, open_model(reference, "reference", report.problems));
  Comparator comparator(model, options, report);
  comparator.declare(tensors);
  CKPT_TRY(
      source([&](std::string_view name, std::uint64_t offset, std::span<const std::byte> bytes) {
        return comparator.window(name, offset, bytes);
      }));
  comparator.finish();
  return report;
}

Result<CompareReport> compare_dirs(const fs::path& candidate, const fs::path& reference,
                                   const CompareOptions& options) {
  std::vector<std::string> candidate_problems;
  CKPT_ASSIGN_OR_RETURN(auto model, open_model(candidate, "candidate", candidate_problems));
  // Each name once (the first); a name twice is a problem of the candidate already.
  std::vector<CandidateTensor> tensors;
  std::vector<const ModelTensor*> sources;
  for (const auto& tensor : model.tensors) {
    if (&model.tensors[model.by_name.at(tensor.entry.name)] != &tensor) continue;
    tensors.push_back({tensor.entry.name, tensor.entry.dtype, tensor.entry.shape});
    sources.push_back(&tensor);
  }
  std::vector<std::byte> buffer(std::max<std::uint64_t>(options.buffer_bytes, 1));
  auto source = [&](const CandidateSink& sink) -> Status {
    for (const ModelTensor* tensor : sources) {
      const InputFile& file = model.files[tensor->file];
      std::uint64_t begin = model.data_start[tensor->file] + tensor->entry.data_begin;
      std::uint64_t size = tensor->entry.data_end - tensor->entry.data_begin;
      for (std::uint64_t at = 0; at < size;) {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), size - at));
        CKPT_TRY(file.read_at(begin + at, std::span(buffer.data(), n)));
        file.drop_cache(begin + at, n);
        CKPT_TRY(sink(tensor->entry.name, at, std::span<const std::byte>(buffer.data(), n)));
        at += n;
      }
    }
    return {};
  };
  CKPT_ASSIGN_OR_RETURN(auto report, compare_stream(tensors, source, reference, options));
  report.problems.insert(report.problems.begin(), candidate_problems.begin(),
                         candidate_problems.end());
  return report;
}

Result<CompareReport> compare_plan(const Plan& plan, const fs::path& reference,
                                   const CompareOptions& options, const ExecOptions& exec_options) {
  std::vector<CandidateTensor> tensors;
  for (const auto& file : plan.files)
    for (const auto& placed : file.tensors)
      tensors.push_back({placed.tensor.name, placed.tensor.dtype, placed.tensor.shape});
  auto source = [&](const CandidateSink& sink) {
    return stream_plan(
        plan, exec_options,
        [&](const OutputFile&, const PlacedTensor& placed, std::uint64_t offset,
            std::span<const std::byte> bytes) { return sink(placed.tensor.name, offset, bytes); });
  };
  return compare_stream(tensors, source, reference, options);
}

}  // namespace ckptstream
