#include "mapping/fp8_blocks.h"

#include <map>
#include <memory>

namespace ckptstream {
namespace {

constexpr std::string_view kScaleSuffix = "_scale_inv";

bool is_fp8(DType dtype) {
  return dtype == DType::kF8E4M3FN;
}

// The weight of each scale, and the scale of each weight, checked for presence.
Result<std::map<std::string, std::pair<const LogicalTensor*, const LogicalTensor*>>> pairs_of(
    const SourceTensors& tensors) {
  std::map<std::string, const LogicalTensor*> by_name;
  for (const auto& t : tensors.tensors) by_name[t.name] = &t;
  std::map<std::string, std::pair<const LogicalTensor*, const LogicalTensor*>> pairs;
  for (const auto& t : tensors.tensors) {
    if (t.name.ends_with(kScaleSuffix)) {
      std::string weight = t.name.substr(0, t.name.size() - kScaleSuffix.size());
      auto it = by_name.find(weight);
      if (it == by_name.end() || !is_fp8(it->second->source_dtype))
        return invalid_input("'" + t.name + "' scales no float8_e4m3fn weight '" + weight + "'");
      continue;
    }
    if (!is_fp8(t.source_dtype)) continue;
    auto scale = by_name.find(t.name + std::string(kScaleSuffix));
    if (scale == by_name.end())
      return invalid_input("float8_e4m3fn weight '" + t.name + "' has no '" + t.name +
                           std::string(kScaleSuffix) +
                           "' (block-quantized weights need their scales to be dequantized)");
    pairs[t.name] = {&t, scale->second};
  }
  return pairs;
}

}  // namespace

Result<std::size_t> count_block_fp8(const SourceTensors& tensors) {
  CKPT_ASSIGN_OR_RETURN(auto pairs, pairs_of(tensors));
  return pairs.size();
}

Status dequantize_block_fp8(SourceTensors& tensors, const HfConfig& config) {
  CKPT_ASSIGN_OR_RETURN(auto pairs, pairs_of(tensors));
  if (pairs.empty()) return {};
  if (!config.weight_block_size)
    return invalid_input(config.path.string() +
                         ": float8_e4m3fn weights with scales, but no "
                         "quantization_config.weight_block_size says their block size");
  auto [block_rows, block_cols] = *config.weight_block_size;
  std::map<std::string, std::shared_ptr<const BlockScaleRef>> refs;
  for (const auto& [name, pair] : pairs) {
    const LogicalTensor& w = *pair.first;
    const LogicalTensor& s = *pair.second;
    auto fail = [&](const std::string& what) {
      return invalid_input("'" + name + "' " + shape_text(w.shape) + ": " + what);
    };
    if (w.shape.size() != 2 || w.fragments.size() != 1 || w.fragments[0].source.offset != 0 ||
        !is_contiguous(w.fragments[0].source.shape, w.fragments[0].source.strides))
      return fail("a block-quantized weight must be one contiguous 2-d tensor");
    std::int64_t grid_rows = (w.shape[0] + block_rows - 1) / block_rows;
    std::int64_t grid_cols = (w.shape[1] + block_cols - 1) / block_cols;
    if (s.shape != Shape{grid_rows, grid_cols})
      return fail("its scale '" + s.name + "' is " + shape_text(s.shape) + ", blocks of " +
                  std::to_string(block_rows) + " x " + std::to_string(block_cols) +
                  " (weight_block_size) need " + shape_text(Shape{grid_rows, grid_cols}));
    if (s.source_dtype != DType::kF32 || s.fragments.size() != 1 ||
        s.fragments[0].source.offset != 0 ||
        !is_contiguous(s.fragments[0].source.shape, s.fragments[0].source.strides))
      return fail("its scale '" + s.name + "' must be one contiguous float32 tensor (it is " +
                  std::string(torch_name(s.source_dtype)) + ")");
    auto ref = std::make_shared<BlockScaleRef>();
    ref->input = s.fragments[0].source.input;
    ref->storage_begin = s.fragments[0].source.storage_begin;
    ref->grid_rows = grid_rows;
    ref->grid_cols = grid_cols;
    ref->weight_cols = w.shape[1];
    ref->block_rows = block_rows;
    ref->block_cols = block_cols;
    refs[name] = std::move(ref);
  }
  std::vector<LogicalTensor> kept;
  for (auto& t : tensors.tensors) {
    if (t.name.ends_with(kScaleSuffix) &&
        pairs.count(t.name.substr(0, t.name.size() - kScaleSuffix.size())))
      continue;
    if (auto it = refs.find(t.name); it != refs.end()) {
      t.fragments[0].source.block_scale = it->second;
      t.source_dtype = t.dtype = DType::kF32;
    }
    kept.push_back(std::move(t));
  }
  tensors.tensors = std::move(kept);
  tensors.notes.push_back(std::to_string(pairs.size()) +
                          " block-quantized float8_e4m3fn weights dequantized (blocks of " +
                          std::to_string(block_rows) + " x " + std::to_string(block_cols) +
                          ", float32(w) * scale_inv); their scales are not written");
  return {};
}

}  // namespace ckptstream
