#include "plan/report.h"

#include <charconv>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "core/json_text.h"

namespace ckptstream {
namespace {

using Detail = PlanSummaryOptions::Detail;

// Where a fragment reads: see the header's terms.
struct FragmentSpan {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint64_t needed = 0;
  bool contiguous = true;
};

FragmentSpan fragment_span(const TensorRef& ref) {
  FragmentSpan span;
  auto element = static_cast<std::int64_t>(element_size(ref.dtype));
  span.contiguous = is_contiguous(ref.shape, ref.strides);
  std::int64_t lowest = ref.offset;
  std::int64_t highest = ref.offset;
  std::int64_t count = numel(ref.shape);
  if (count > 0) {
    for (std::size_t d = 0; d < ref.shape.size() && d < ref.strides.size(); ++d) {
      std::int64_t extent = (ref.shape[d] - 1) * ref.strides[d];
      (extent < 0 ? lowest : highest) += extent;
    }
    span.length = static_cast<std::uint64_t>(highest - lowest + 1) * element_size(ref.dtype);
    span.needed = static_cast<std::uint64_t>(count) * element_size(ref.dtype);
  }
  span.offset =
      ref.storage_begin + static_cast<std::uint64_t>(std::max<std::int64_t>(lowest * element, 0));
  return span;
}

std::string_view dtype_name(DType dtype) {
  const auto& info = dtype_info(dtype);
  return info.safetensors_name.empty() ? info.torch_name : info.safetensors_name;
}

void append_number(std::string& out, std::uint64_t value) {
  char digits[24];
  auto end = std::to_chars(digits, digits + sizeof digits, value).ptr;
  out.append(digits, end);
}

void append_number(std::string& out, std::int64_t value) {
  char digits[24];
  auto end = std::to_chars(digits, digits + sizeof digits, value).ptr;
  out.append(digits, end);
}

// Shortest round-trip form; JSON has no inf or NaN, so those become null.
void append_json_double(std::string& out, double value) {
  if (!std::isfinite(value)) {
    out += "null";
    return;
  }
  char digits[32];
  auto end = std::to_chars(digits, digits + sizeof digits, value).ptr;
  out.append(digits, end);
}

// "[4, 2]" for people, "[4,2]" in JSON.
void append_list(std::string& out, const Shape& values, std::string_view separator) {
  out += '[';
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) out += separator;
    append_number(out, values[i]);
  }
  out += ']';
}

std::uint64_t side_file_size(const SideFile& side) {
  std::error_code error;
  auto size = std::filesystem::file_size(side.source, error);
  return error ? 0 : size;
}

std::uint64_t count_fragments(const LogicalTensor& tensor) {
  std::uint64_t count = tensor.fragments.size();
  if (tensor.lora) count += tensor.lora->a.fragments.size() + tensor.lora->b.fragments.size();
  return count;
}

std::uint64_t bytes_needed(const LogicalTensor& tensor) {
  std::uint64_t bytes = 0;
  for (const auto& fragment : tensor.fragments)
    if (!fragment.source.zeros) bytes += fragment_span(fragment.source).needed;
  if (tensor.lora) bytes += bytes_needed(tensor.lora->a) + bytes_needed(tensor.lora->b);
  return bytes;
}

// --- text ------------------------------------------------------------------------------------

void append_bytes_text(std::string& out, std::uint64_t bytes) {
  append_number(out, bytes);
  out += bytes == 1 ? " byte (" : " bytes (";
  out += human_bytes(bytes);
  out += ')';
}

// How a fragment is written: the same fields in the same order in both reports, in their syntax.
struct FragmentSyntax {
  std::string_view zeros;  // before the shape of a zero-fill region
  std::string_view input;  // before the input (text: its path; JSON: its index)
  std::string_view offset, length, shape, strides, at, byteswap, end;
  std::string_view list_separator;
  const Plan* plan;  // text: the paths of the inputs
};

void append_fragment(std::string& out, const Fragment& fragment, const FragmentSyntax& syntax) {
  const auto& ref = fragment.source;
  if (ref.zeros) {
    out += syntax.zeros;
  } else {
    auto span = fragment_span(ref);
    out += syntax.input;
    if (!syntax.plan)
      append_number(out, static_cast<std::uint64_t>(ref.input));
    else if (ref.input < syntax.plan->inputs.size())
      out += syntax.plan->inputs[ref.input].native();
    else
      out += "#" + std::to_string(ref.input);
    out += syntax.offset;
    append_number(out, span.offset);
    out += syntax.length;
    append_number(out, span.length);
    out += syntax.shape;
    append_list(out, ref.shape, syntax.list_separator);
    if (!span.contiguous) {
      out += syntax.strides;
      append_list(out, ref.strides, syntax.list_separator);
    }
  }
  if (ref.zeros) append_list(out, ref.shape, syntax.list_separator);
  out += syntax.at;
  append_list(out, fragment.offsets, syntax.list_separator);
  if (ref.byteswap && !ref.zeros) out += syntax.byteswap;
  out += syntax.end;
}

void append_fragments_text(std::string& out, const Plan& plan, const LogicalTensor& tensor,
                           std::string_view prefix) {
  const FragmentSyntax text{"zeros ", "",          " @", " +", " ",  " strides ",
                            " at ",   " byteswap", "\n", ", ", &plan};
  for (const auto& fragment : tensor.fragments) {
    out += prefix;
    out += "<- ";
    append_fragment(out, fragment, text);
  }
}

void append_dtype_shape_text(std::string& out, const LogicalTensor& tensor) {
  out += dtype_name(tensor.dtype);
  out += ' ';
  append_list(out, tensor.shape, ", ");
}

void append_tensor_text(std::string& out, const Plan& plan, const OutputFile& file,
                        const PlacedTensor& placed, Detail detail) {
  const auto& tensor = placed.tensor;
  out += "  ";
  out += tensor.name;
  out += ' ';
  append_dtype_shape_text(out, tensor);
  out += " bytes [";
  append_number(out, file.header.size() + placed.data_begin);
  out += ", ";
  append_number(out, file.header.size() + placed.data_end);
  out += ')';
  if (tensor.source_dtype != tensor.dtype) {
    out += " from ";
    out += dtype_name(tensor.source_dtype);
  }
  out += '\n';
  if (detail != Detail::kFragments) return;
  append_fragments_text(out, plan, tensor, "    ");
  if (!tensor.lora) return;
  const auto& lora = *tensor.lora;
  out += "    lora scale ";
  append_json_double(out, lora.scale);
  out += " A ";
  append_dtype_shape_text(out, lora.a);
  out += " B ";
  append_dtype_shape_text(out, lora.b);
  out += '\n';
  append_fragments_text(out, plan, lora.a, "      A ");
  append_fragments_text(out, plan, lora.b, "      B ");
}

// --- JSON ------------------------------------------------------------------------------------

void append_fragments_json(std::string& out, const LogicalTensor& tensor) {
  const FragmentSyntax json{"\"zeros\":true,\"shape\":",
                            "\"input\":",
                            ",\"offset\":",
                            ",\"length\":",
                            ",\"shape\":",
                            ",\"strides\":",
                            ",\"at\":",
                            ",\"byteswap\":true",
                            "}",
                            ",",
                            nullptr};
  out += ",\"fragments\":[";
  for (std::size_t i = 0; i < tensor.fragments.size(); ++i) {
    out += i ? ",{" : "{";
    append_fragment(out, tensor.fragments[i], json);
  }
  out += ']';
}

// "dtype", "source_dtype" and "shape", without braces.
void append_tensor_fields_json(std::string& out, const LogicalTensor& tensor) {
  out += "\"dtype\":\"";
  out += dtype_name(tensor.dtype);
  out += "\",\"source_dtype\":\"";
  out += dtype_name(tensor.source_dtype);
  out += "\",\"shape\":";
  append_list(out, tensor.shape, ",");
}

void append_tensor_json(std::string& out, const OutputFile& file, const PlacedTensor& placed,
                        Detail detail) {
  const auto& tensor = placed.tensor;
  out += "{\"name\":";
  append_json_text(out, tensor.name);
  out += ',';
  append_tensor_fields_json(out, tensor);
  out += ",\"begin\":";
  append_number(out, file.header.size() + placed.data_begin);
  out += ",\"end\":";
  append_number(out, file.header.size() + placed.data_end);
  if (detail == Detail::kFragments) append_fragments_json(out, tensor);
  if (tensor.lora) {
    const auto& lora = *tensor.lora;
    out += ",\"lora\":{\"scale\":";
    append_json_double(out, lora.scale);
    for (const auto* factor : {&lora.a, &lora.b}) {
      out += factor == &lora.a ? ",\"a\":{" : ",\"b\":{";
      append_tensor_fields_json(out, *factor);
      if (detail == Detail::kFragments) append_fragments_json(out, *factor);
      out += '}';
    }
    out += '}';
  }
  out += '}';
}

std::size_t estimated_size(const Plan& plan, bool json) {
  std::size_t size = 512 + plan.inputs.size() * 96 + plan.side_files.size() * 160;
  for (const auto& file : plan.files) {
    size += 128;
    for (const auto& placed : file.tensors)
      size += placed.tensor.name.size() + 96 + count_fragments(placed.tensor) * (json ? 96 : 128);
  }
  return size;
}

}  // namespace

std::string human_bytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  char digits[32];
  auto end = std::to_chars(digits, digits + sizeof digits, value, std::chars_format::fixed, 1).ptr;
  std::string text(digits, end);
  if (text.size() > 2 && text.compare(text.size() - 2, 2, ".0") == 0) text.resize(text.size() - 2);
  return text + " " + kUnits[unit];
}

PlanTotals plan_totals(const Plan& plan) {
  PlanTotals totals;
  totals.files = plan.files.size();
  for (const auto& file : plan.files) {
    totals.bytes_written += file.size();
    for (const auto& placed : file.tensors) {
      ++totals.tensors;
      totals.fragments += count_fragments(placed.tensor);
      totals.bytes_read += bytes_needed(placed.tensor);
      totals.tensor_bytes += placed.data_end - placed.data_begin;
    }
  }
  totals.bytes_written += plan.index_json.size();
  for (const auto& side : plan.side_files) totals.bytes_written += side_file_size(side);
  return totals;
}

void write_plan_text(const Plan& plan, const PlanSummaryOptions& options, const ReportSink& sink) {
  std::string out;
  auto flush = [&] {
    sink(out);
    out.clear();
  };
  for (const auto& file : plan.files) {
    out += "file ";
    out += file.name;
    out += ": ";
    append_number(out, file.size());
    out += " bytes (header ";
    append_number(out, static_cast<std::uint64_t>(file.header.size()));
    out += "), ";
    append_number(out, static_cast<std::uint64_t>(file.tensors.size()));
    out += file.tensors.size() == 1 ? " tensor\n" : " tensors\n";
    if (options.detail != Detail::kFiles)
      for (const auto& placed : file.tensors)
        append_tensor_text(out, plan, file, placed, options.detail);
    flush();
  }
  for (const auto& side : plan.side_files) {
    out += "side ";
    out += side.name;
    out += " <- ";
    out += side.source.native();
    out += " (";
    append_number(out, side_file_size(side));
    out += " bytes)\n";
  }
  if (!plan.index_json.empty()) {
    out += "index ";
    out += kIndexFileName;
    out += " (";
    append_number(out, static_cast<std::uint64_t>(plan.index_json.size()));
    out += " bytes)\n";
  }
  auto totals = plan_totals(plan);
  out += "total: ";
  append_number(out, totals.files);
  out += totals.files == 1 ? " file, " : " files, ";
  append_number(out, totals.tensors);
  out += totals.tensors == 1 ? " tensor, " : " tensors, ";
  append_number(out, totals.fragments);
  out += totals.fragments == 1 ? " fragment; read " : " fragments; read ";
  append_bytes_text(out, totals.bytes_read);
  out += "; write ";
  append_bytes_text(out, totals.bytes_written);
  out += "; memory window ";
  append_bytes_text(out, options.memory_window);
  out += '\n';
  flush();
}

void write_plan_json(const Plan& plan, const PlanSummaryOptions& options, const ReportSink& sink) {
  std::string out;
  auto flush = [&] {
    sink(out);
    out.clear();
  };
  out += "{\"schema\":\"ckptstream.plan/1\",\n\"inputs\":[";
  for (std::size_t i = 0; i < plan.inputs.size(); ++i) {
    if (i) out += ',';
    append_json_text(out, plan.inputs[i].native());
  }
  out += "],\n\"files\":[";
  for (std::size_t f = 0; f < plan.files.size(); ++f) {
    const auto& file = plan.files[f];
    out += f ? ",\n{\"name\":" : "\n{\"name\":";
    append_json_text(out, file.name);
    out += ",\"size\":";
    append_number(out, file.size());
    out += ",\"header_bytes\":";
    append_number(out, static_cast<std::uint64_t>(file.header.size()));
    if (options.detail != Detail::kFiles) {
      out += ",\"tensors\":[";
      for (std::size_t t = 0; t < file.tensors.size(); ++t) {
        out += t ? ",\n " : "\n ";
        append_tensor_json(out, file, file.tensors[t], options.detail);
      }
      out += ']';
    }
    out += '}';
    flush();
  }
  out += "],\n\"side_files\":[";
  for (std::size_t i = 0; i < plan.side_files.size(); ++i) {
    const auto& side = plan.side_files[i];
    out += i ? ",{\"name\":" : "{\"name\":";
    append_json_text(out, side.name);
    out += ",\"source\":";
    append_json_text(out, side.source.native());
    out += ",\"size\":";
    append_number(out, side_file_size(side));
    out += '}';
  }
  out += "],\n\"index\":";
  if (plan.index_json.empty()) {
    out += "null";
  } else {
    out += "{\"name\":";
    append_json_text(out, kIndexFileName);
    out += ",\"size\":";
    append_number(out, static_cast<std::uint64_t>(plan.index_json.size()));
    out += '}';
  }
  auto totals = plan_totals(plan);
  out += ",\n\"totals\":{\"files\":";
  append_number(out, totals.files);
  out += ",\"tensors\":";
  append_number(out, totals.tensors);
  out += ",\"fragments\":";
  append_number(out, totals.fragments);
  out += ",\"bytes_read\":";
  append_number(out, totals.bytes_read);
  out += ",\"bytes_written\":";
  append_number(out, totals.bytes_written);
  out += ",\"tensor_bytes\":";
  append_number(out, totals.tensor_bytes);
  out += ",\"memory_window\":";
  append_number(out, options.memory_window);
  out += '}';
  if (!options.layout.empty()) {
    out += ",\n\"layout\":";
    append_json_text(out, options.layout);
  }
  if (!options.notes.empty()) {
    out += ",\n\"notes\":[";
    for (std::size_t i = 0; i < options.notes.size(); ++i) {
      out += i ? ",\n " : "\n ";
      append_json_text(out, options.notes[i]);
    }
    out += ']';
  }
  out += "}\n";
  flush();
}

std::string plan_to_text(const Plan& plan, const PlanSummaryOptions& options) {
  std::string out;
  out.reserve(estimated_size(plan, false));
  write_plan_text(plan, options, [&](std::string_view part) { out += part; });
  return out;
}

std::string plan_to_json(const Plan& plan, const PlanSummaryOptions& options) {
  std::string out;
  out.reserve(estimated_size(plan, true));
  write_plan_json(plan, options, [&](std::string_view part) { out += part; });
  return out;
}

}  // namespace ckptstream
