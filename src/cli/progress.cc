#include "cli/progress.h"

#include "plan/report.h"

#include <unistd.h>

#include <cstdio>

namespace ckptstream::cli {

ProgressBar::ProgressBar(std::string label, bool quiet)
    : label_(std::move(label)),
      enabled_(!quiet && ::isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() {
  finish();
}

void ProgressBar::update(std::uint64_t done, std::uint64_t total) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  drawn_ = true;
  double fraction = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  int filled = static_cast<int>(fraction * 30);
  double seconds = std::chrono::duration<double>(now - start_).count();
  auto rate = seconds > 0 ? static_cast<std::uint64_t>(static_cast<double>(done) / seconds) : 0;
  std::fprintf(stderr, "\r%s [%-30s] %3d%% %s / %s  %s/s ", label_.c_str(),
               std::string(static_cast<std::size_t>(filled), '#').c_str(),
               static_cast<int>(fraction * 100), human_bytes(done).c_str(),
               human_bytes(total).c_str(), human_bytes(rate).c_str());
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (enabled_ && drawn_) std::fputc('\n', stderr);
  drawn_ = false;
}

}  // namespace ckptstream::cli
