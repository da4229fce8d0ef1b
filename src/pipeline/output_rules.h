// Output rules shared by every conversion: the dtype floating-point tensors are written in.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include "ckptstream/dtype.h"
#include "ckptstream/result.h"
#include "formats/hf_config.h"
#include "plan/plan.h"

namespace ckptstream {

enum class DTypeChoice { kAuto, kKeep, kBF16, kF16, kF32 };
Result<DTypeChoice> parse_dtype_choice(std::string_view text);

// The dtype floating-point tensors are written in (nullopt: keep each tensor's own). `auto`
// takes the config's dtype (transformers v5's `dtype`, else v4's `torch_dtype`) when there is a
// config and it names one; "auto" there keeps.
Result<std::optional<DType>> resolve_float_dtype(DTypeChoice choice,
                                                 const std::optional<HfConfig>& config);

// Sets the written dtype of every floating-point tensor (others keep theirs), except a float32
// MoE router bias (`*e_score_correction_bias`), which transformers keeps in float32.
void set_output_dtypes(std::vector<LogicalTensor>& tensors, std::optional<DType> float_dtype);

}  // namespace ckptstream
