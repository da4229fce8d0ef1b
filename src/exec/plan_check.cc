#include "exec/plan_check.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <set>
#include <string>

#include "exec/dtype_convert.h"
#include "exec/manifest.h"
#include "exec/tensor_writer.h"
#include "plan/tiling.h"

namespace ckptstream {
namespace {

std::string quoted(const std::string& name) {
  return "'" + name + "'";
}

// The index of the last storage element a non-empty view touches, if it does not overflow.
std::optional<std::int64_t> last_element(const TensorRef& view) {
  std::int64_t last = view.offset;
  for (std::size_t d = 0; d < view.shape.size(); ++d) {
    std::int64_t step = 0;
    if (__builtin_mul_overflow(view.shape[d] - 1, view.strides[d], &step) ||
        __builtin_add_overflow(last, step, &last))
      return std::nullopt;
  }
  return last;
}

Status check_view_shape(const Fragment& fragment, const Shape& logical) {
  const TensorRef& view = fragment.source;
  std::size_t rank = logical.size();
  if (view.shape.size() != rank || view.strides.size() != rank || fragment.offsets.size() != rank) {
    return invalid_input(
        "rank mismatch: tensor has " + std::to_string(rank) +
        " dims, fragment shape/strides/offsets have " + std::to_string(view.shape.size()) + "/" +
        std::to_string(view.strides.size()) + "/" + std::to_string(fragment.offsets.size()));
  }
  if (view.offset < 0) return invalid_input("negative storage offset");
  for (std::size_t d = 0; d < rank; ++d) {
    if (view.shape[d] < 0) return invalid_input("negative size in dim " + std::to_string(d));
    if (view.strides[d] < 0) return unsupported("negative stride in dim " + std::to_string(d));
    if (fragment.offsets[d] < 0 || fragment.offsets[d] > logical[d] ||
        view.shape[d] > logical[d] - fragment.offsets[d]) {
      return invalid_input("box [" + std::to_string(fragment.offsets[d]) + ", " +
                           std::to_string(fragment.offsets[d] + view.shape[d]) + ") of dim " +
                           std::to_string(d) + " lies outside the tensor's size " +
                           std::to_string(logical[d]));
    }
  }
  return {};
}

Status check_view_bytes(const TensorRef& view, std::span<const InputFile> inputs) {
  if (view.zeros) return {};  // reads no file
  if (view.input >= inputs.size())
    return invalid_input("input index " + std::to_string(view.input) + " out of range");
  const InputFile& file = inputs[view.input];
  if (!range_fits(view.storage_begin, view.storage_nbytes, file.size())) {
    return invalid_input(file.path().string() + ": storage [" + std::to_string(view.storage_begin) +
                         ", +" + std::to_string(view.storage_nbytes) +
                         ") lies past the end of the file (" + std::to_string(file.size()) +
                         " bytes)");
  }
  if (checked_numel(view.shape).value_or(0) == 0) return {};
  auto last = last_element(view);
  auto storage_elements = view.storage_nbytes / element_size(view.dtype);
  if (!last || static_cast<std::uint64_t>(*last) >= storage_elements) {
    return invalid_input(file.path().string() + ": view reaches past its storage of " +
                         std::to_string(view.storage_nbytes) + " bytes at offset " +
                         std::to_string(view.storage_begin));
  }
  return {};
}

// The fragments lie inside the tensor (check_view_shape); the planner's one tiling check says
// whether they cover it exactly.
Status check_tiling(const LogicalTensor& tensor) {
  auto fault = find_tiling_fault(tensor);
  if (!fault) return {};
  if (fault->kind == TilingFault::Kind::kOverlap)
    return invalid_input("fragments " + std::to_string(fault->first) + " and " +
                         std::to_string(fault->second) + " overlap");
  if (fault->kind == TilingFault::Kind::kHoles)
    return invalid_input("fragments cover " + std::to_string(fault->covered) + " of " +
                         std::to_string(fault->total) + " elements (holes)");
  return invalid_input("fragment " + std::to_string(fault->first) + " lies outside the tensor");
}

// W [out, in] + scale * (B [out, r] @ A [r, in]): shapes agree, every dtype is a float the fused
// float32 sum converts from and to, A and B fit kMaxLoraFactorBytes, the scale is finite, and A
// and B are themselves valid tensors (without deltas of their own).
Status check_lora(const LogicalTensor& tensor, std::span<const InputFile> inputs) {
  const LoraDelta& lora = *tensor.lora;
  const Shape& a = lora.a.shape;
  const Shape& b = lora.b.shape;
  if (tensor.shape.size() != 2 || a.size() != 2 || b.size() != 2 || a[0] != b[1] || a[0] < 1 ||
      a[1] != tensor.shape[1] || b[0] != tensor.shape[0]) {
    return invalid_input("shapes do not fit W + B @ A: W " + shape_text(tensor.shape) + ", A " +
                         shape_text(a) + ", B " + shape_text(b));
  }
  auto is_float = [](DType dtype) { return dtype_info(dtype).is_float; };
  if (!is_float(tensor.source_dtype) || !is_float(tensor.dtype) || !is_float(lora.a.source_dtype) ||
      !is_float(lora.b.source_dtype)) {
    return unsupported("a LoRA delta needs floating-point W, A and B (W " +
                       std::string(torch_name(tensor.source_dtype)) + " -> " +
                       std::string(torch_name(tensor.dtype)) + ", A " +
                       std::string(torch_name(lora.a.source_dtype)) + ", B " +
                       std::string(torch_name(lora.b.source_dtype)) + ")");
  }
  if (lora.a.lora || lora.b.lora) return invalid_input("A or B has a LoRA delta of its own");
  if (!std::isfinite(lora.scale)) return invalid_input("LoRA scale is not finite");
  // Shapes are checked non-negative and small enough by check_tensor below; bound the product.
  std::uint64_t a_elements = 0, b_elements = 0, total = 0;
  if (__builtin_mul_overflow(static_cast<std::uint64_t>(a[0]), static_cast<std::uint64_t>(a[1]),
                             &a_elements) ||
      __builtin_mul_overflow(static_cast<std::uint64_t>(b[0]), static_cast<std::uint64_t>(b[1]),
                             &b_elements) ||
      __builtin_add_overflow(a_elements, b_elements, &total) ||
      total > kMaxLoraFactorBytes / sizeof(float)) {
    return unsupported("LoRA factors A " + shape_text(a) + " and B " + shape_text(b) +
                       " exceed the " + std::to_string(kMaxLoraFactorBytes >> 20) +
                       " MiB (as float32) held in memory");
  }
  CKPT_TRY_CTX(check_tensor(lora.a, inputs), "LoRA A");
  CKPT_TRY_CTX(check_tensor(lora.b, inputs), "LoRA B");
  return {};
}

}  // namespace

Status check_output_names(const Plan& plan) {
  std::vector<std::string> names;
  for (const auto& file : plan.files) names.push_back(file.name);
  for (const auto& side : plan.side_files) names.push_back(side.name);
  for (const auto& text : plan.text_files) names.push_back(text.name);
  if (!plan.index_json.empty()) names.emplace_back(kIndexFileName);
  names.emplace_back(kManifestFileName);
  std::set<std::string> seen;
  for (const auto& name : names) {
    if (!is_safe_relative_name(name))
      return usage_error("output name " + quoted(name) + " is not a plain relative path");
    if (!seen.insert(name).second)
      return usage_error("output name " + quoted(name) + " is used twice");
  }
  return {};
}

Status check_output_file(const OutputFile& file) {
  std::uint64_t previous_end = 0;
  for (const auto& placed : file.tensors) {
    auto numel = checked_numel(placed.tensor.shape);
    std::uint64_t bytes = 0;
    if (!numel || __builtin_mul_overflow(static_cast<std::uint64_t>(*numel),
                                         element_size(placed.tensor.dtype), &bytes)) {
      return invalid_input("tensor " + quoted(placed.tensor.name) + ": shape overflows");
    }
    if (placed.data_begin < previous_end || placed.data_end < placed.data_begin ||
        placed.data_end - placed.data_begin != bytes) {
      return invalid_input("tensor " + quoted(placed.tensor.name) + ": data_offsets [" +
                           std::to_string(placed.data_begin) + ", " +
                           std::to_string(placed.data_end) + ") overlap the previous tensor " +
                           "or do not hold its " + std::to_string(bytes) + " bytes");
    }
    previous_end = placed.data_end;
  }
  if (previous_end > UINT64_MAX - file.header.size()) return invalid_input("file size overflows");
  return {};
}

Status check_tensor(const LogicalTensor& tensor, std::span<const InputFile> inputs) {
  auto fail = [&](const Error& error) {
    return error.with_context("tensor " + quoted(tensor.name));
  };
  auto numel = checked_numel(tensor.shape);
  if (!numel) return fail(invalid_input("bad shape"));
  if (!can_convert(tensor.source_dtype, tensor.dtype)) {
    return fail(unsupported("cannot convert " + std::string(torch_name(tensor.source_dtype)) +
                            " to " + std::string(torch_name(tensor.dtype))));
  }
  if (tensor.lora) {
    if (auto status = check_lora(tensor, inputs); !status.ok()) return fail(status.error());
  }
  for (std::size_t i = 0; i < tensor.fragments.size(); ++i) {
    const Fragment& fragment = tensor.fragments[i];
    auto fragment_fail = [&](const Error& error) {
      return fail(error.with_context("fragment " + std::to_string(i)));
    };
    if (const auto& scale = fragment.source.block_scale) {
      if (tensor.source_dtype != DType::kF32 || element_size(fragment.source.dtype) != 1 ||
          scale->weight_cols <= 0 || scale->block_rows <= 0 || scale->block_cols <= 0 ||
          scale->grid_rows <= 0 || scale->grid_cols <= 0)
        return fragment_fail(invalid_input("a block-scaled view must be 8-bit, read as float32"));
      if (scale->input >= inputs.size() ||
          scale->storage_begin +
                  static_cast<std::uint64_t>(scale->grid_rows * scale->grid_cols) * 4 >
              inputs[scale->input].size())
        return fragment_fail(invalid_input("its block scales lie outside their file"));
    } else if (fragment.source.dtype != tensor.source_dtype) {
      return fragment_fail(invalid_input("dtype differs from the tensor's source dtype"));
    }
    if (auto status = check_view_shape(fragment, tensor.shape); !status.ok())
      return fragment_fail(status.error());
    if (auto status = check_view_bytes(fragment.source, inputs); !status.ok())
      return fragment_fail(status.error());
  }
  if (*numel == 0) return {};
  if (auto status = check_tiling(tensor); !status.ok())
    return fail(status.error().with_context("fragments do not tile the tensor"));
  return {};
}

}  // namespace ckptstream
