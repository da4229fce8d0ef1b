// Validation of a Plan before the executor moves a byte: the boundary between untrusted plan
// values (offsets and strides read from checkpoints) and the trusted arithmetic of the copy
// loops. Every check is overflow-safe and every error names the file, tensor or input at fault.
#pragma once

#include <span>

#include "ckptstream/result.h"
#include "io/input_file.h"
#include "plan/plan.h"

namespace ckptstream {

// Output names are relative paths without "." / ".." components, unique across tensor files,
// side files, the index and the manifest.
Status check_output_names(const Plan& plan);

// An output file's tensors are sorted, do not overlap and have the byte size of shape x dtype.
Status check_output_file(const OutputFile& file);

// A tensor's dtypes convert; each fragment's view lies inside its storage and the storage
// inside its input file; the fragments tile the tensor exactly (no holes, no overlaps).
Status check_tensor(const LogicalTensor& tensor, std::span<const InputFile> inputs);

}  // namespace ckptstream
