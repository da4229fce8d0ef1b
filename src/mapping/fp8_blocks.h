// Block-quantized FP8 Hugging Face models (DeepSeek-V3/R1, Kimi-K2 and others publish their
// weights this way; transformers calls it fine-grained FP8): each quantized weight W [M, N] is
// stored as float8_e4m3fn next to `<W's name>_scale_inv`, float32 [ceil(M / br), ceil(N / bc)],
// with [br, bc] = config.json's quantization_config.weight_block_size (edge blocks partial).
// The real weight is float32(W) * scale_inv expanded over each block, which DeepSeek's
// fp8_cast_bf16 and transformers' dequantization then cast to bfloat16.
//
// Dequantizing here is a view (plan.h BlockScaleRef): the executor computes each element's
// value as it streams, so no weight is held whole; the scales leave the model.
#pragma once

#include <cstddef>

#include "ckptstream/result.h"
#include "formats/hf_config.h"
#include "formats/source_model.h"

namespace ckptstream {

// Which tensors are block-quantized, and whether they are consistent: every float8_e4m3fn
// tensor has its scale tensor and the reverse. Returns how many weights are quantized (0 for
// an ordinary model); errors name the weight and what is wrong with its scale.
Result<std::size_t> count_block_fp8(const SourceTensors& tensors);

// Turns every quantized weight into a float32 view of its dequantized values and drops the scale
// tensors. Errors: a weight without its scale, a scale without its weight, a scale whose grid
// is not ceil(M / br) x ceil(N / bc) or that is not float32, a weight that is not one contiguous
// 2-d tensor, no weight_block_size in config.json.
Status dequantize_block_fp8(SourceTensors& tensors, const HfConfig& config);

}  // namespace ckptstream
