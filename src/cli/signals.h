// SIGINT, SIGTERM and SIGHUP turned into a stop request (core/interrupt.h). The signals are
// blocked in every thread, so that no handler ever runs in the middle of our code, and a thread
// of their own receives them with sigwait: the first one sets the flag and says so, and the
// command unwinds, removing what it wrote; a second one ends the process at once (what it leaves,
// a staging directory or a temporary file, the next run into the same place removes).
#pragma once

#include <atomic>
#include <thread>

#include "core/interrupt.h"

namespace ckptstream::cli {

class SignalWatcher {
 public:
  // Must be made before any other thread starts: threads inherit the blocked signals.
  SignalWatcher();
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  const InterruptFlag* flag() const { return &requested_; }
  // The first signal received, 0 while none was.
  int signal() const { return signal_.load(); }

 private:
  void watch();
  InterruptFlag requested_{false};
  std::atomic<bool> stopping_{false};  // set by the destructor
  std::atomic<int> signal_{0};
  std::thread thread_;
};

// "SIGINT", "SIGTERM", "SIGHUP".
const char* signal_name(int signal);

}  // namespace ckptstream::cli
