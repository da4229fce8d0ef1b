// A one-line progress bar on stderr, drawn only when stderr is a terminal and not --quiet.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "plan/report.h"  // human_bytes(), used with the bar

namespace ckptstream::cli {

class ProgressBar {
 public:
  ProgressBar(std::string label, bool quiet);
  ~ProgressBar();
  void update(std::uint64_t done, std::uint64_t total);
  void finish();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace ckptstream::cli
