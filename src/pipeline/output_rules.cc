#include "pipeline/output_rules.h"

#include <string>

namespace ckptstream {

Result<DTypeChoice> parse_dtype_choice(std::string_view text) {
  if (text == "auto") return DTypeChoice::kAuto;
  if (text == "keep") return DTypeChoice::kKeep;
  if (text == "bf16" || text == "bfloat16") return DTypeChoice::kBF16;
  if (text == "fp16" || text == "float16" || text == "half") return DTypeChoice::kF16;
  if (text == "fp32" || text == "float32" || text == "float") return DTypeChoice::kF32;
  return usage_error("--dtype must be one of auto, keep, bf16, fp16, fp32 (got '" +
                     std::string(text) + "')");
}

Result<std::optional<DType>> resolve_float_dtype(DTypeChoice choice,
                                                 const std::optional<HfConfig>& config) {
  switch (choice) {
    case DTypeChoice::kKeep:
      return std::optional<DType>();
    case DTypeChoice::kBF16:
      return std::optional<DType>(DType::kBF16);
    case DTypeChoice::kF16:
      return std::optional<DType>(DType::kF16);
    case DTypeChoice::kF32:
      return std::optional<DType>(DType::kF32);
    case DTypeChoice::kAuto:
      break;
  }
  if (!config || config->dtype.empty() || config->dtype == "auto") return std::optional<DType>();
  auto dtype = dtype_from_torch_name(config->dtype);
  if (!dtype || !dtype_info(*dtype).is_float)
    return invalid_input(config->path.string() + ": " + config->dtype_key + " '" + config->dtype +
                         "' is not a floating-point dtype");
  return std::optional<DType>(*dtype);
}

void set_output_dtypes(std::vector<LogicalTensor>& tensors, std::optional<DType> float_dtype) {
  if (!float_dtype) return;
  // transformers keeps the router's score-correction bias in float32 whatever the model's dtype
  // (_keep_in_fp32_modules_strict of DeepSeek-V3, GLM-4-MoE, ...); Megatron trains it in float32.
  constexpr std::string_view kFp32Bias = "e_score_correction_bias";
  for (auto& t : tensors) {
    if (!dtype_info(t.source_dtype).is_float) continue;
    bool keep_fp32 =
        t.source_dtype == DType::kF32 && t.name.size() >= kFp32Bias.size() &&
        t.name.compare(t.name.size() - kFp32Bias.size(), kFp32Bias.size(), kFp32Bias) == 0;
    if (!keep_fp32) t.dtype = *float_dtype;
  }
}

}  // namespace ckptstream
