// Which kind of file is this? Decided from the first bytes, never from the name:
//   "PK\x03\x04"                    zip (torch.save >= 1.6, also TorchScript and DCP items)
//   80 02 8A 0A 6C FC 9C 46 F9 20   legacy torch.save (pickled magic number)
//   u64 LE N, then '{' within N     safetensors
#pragma once

#include <filesystem>

#include "ckptstream/result.h"

namespace ckptstream {

enum class FileKind { kTorchZip, kTorchLegacy, kSafetensors, kOther };

Result<FileKind> detect_file_kind(const std::filesystem::path& path);

}  // namespace ckptstream
