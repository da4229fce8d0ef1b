#include "formats/detect.h"

#include <array>
#include <cstring>

#include "io/input_file.h"

namespace ckptstream {

Result<FileKind> detect_file_kind(const std::filesystem::path& path) {
  CKPT_ASSIGN_OR_RETURN(auto file, InputFile::open(path));
  std::array<unsigned char, 16> head{};
  auto n = std::min<std::uint64_t>(head.size(), file.size());
  CKPT_TRY(file.read_at(0, std::as_writable_bytes(std::span(head.data(), n))));
  static constexpr unsigned char kZip[] = {0x50, 0x4B, 0x03, 0x04};
  static constexpr unsigned char kLegacy[] = {0x80, 0x02, 0x8A, 0x0A, 0x6C,
                                              0xFC, 0x9C, 0x46, 0xF9, 0x20};
  if (n >= 4 && std::memcmp(head.data(), kZip, 4) == 0) return FileKind::kTorchZip;
  if (n >= 10 && std::memcmp(head.data(), kLegacy, 10) == 0) return FileKind::kTorchLegacy;
  if (n >= 9) {
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | head[static_cast<std::size_t>(i)];
    if (header_len >= 2 && header_len <= file.size() - 8 && head[8] == '{')
      return FileKind::kSafetensors;
  }
  return FileKind::kOther;
}

}  // namespace ckptstream
