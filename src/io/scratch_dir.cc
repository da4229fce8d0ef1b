#include "io/scratch_dir.h"

#include <unistd.h>

#include <cstdio>
#include <random>
#include <string>
#include <string_view>

namespace ckptstream {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kScratchPrefix = "ckptstream-scratch-";

}  // namespace

ScratchDir::ScratchDir() {
  std::error_code ec;
  fs::path tmp = fs::temp_directory_path(ec);
  if (ec) return;                                     // the reader reports it on first use
  remove_abandoned_directories(tmp, kScratchPrefix);  // what killed runs left
  std::random_device random;
  for (int attempt = 0; attempt < 16 && path_.empty(); ++attempt) {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, "%d-%08x", static_cast<int>(::getpid()),
                  static_cast<unsigned>(random()));
    fs::path dir = tmp / (std::string(kScratchPrefix) + suffix);
    auto lock = make_locked_directory(dir, "scratch", {}, 0700);  // decoded tensors: private
    if (!lock.ok()) continue;
    path_ = dir;
    lock_ = std::move(lock).value();
  }
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  if (!path_.empty()) fs::remove_all(path_, ec);
  if (lock_) lock_->release();
}

}  // namespace ckptstream
