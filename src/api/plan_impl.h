// What a ConversionPlan (include/ckptstream/ckptstream.h) holds: the orchestration's plan. For
// the library's own commands that need more than the public API shows (`test`, `verify
// --reference`, `inspect` work on the plan's tensors directly).
#pragma once

#include "ckptstream/ckptstream.h"
#include "pipeline/merge_plan.h"

namespace ckptstream {

struct ConversionPlan::Impl {
  MergePlan merge;
};

}  // namespace ckptstream
