// A request to stop, shared by everything one command runs: main's signal watcher sets it when
// SIGINT, SIGTERM or SIGHUP arrives (cli/signals.h). Long loops (reading rank files and DCP
// items, streaming tensors, hashing, waiting for other ranks) look at it between steps and return
// an interrupted error; the objects they unwind remove what they created (staging directories,
// temporary files, scratch directories), so that an interrupted run leaves nothing behind.
// A null pointer is a request that never comes.
#pragma once

#include <atomic>

#include "ckptstream/ckptstream.h"  // InterruptFlag
#include "ckptstream/result.h"

namespace ckptstream {

inline bool interrupt_requested(const InterruptFlag* flag) {
  return flag != nullptr && flag->load(std::memory_order_relaxed);
}

inline Status check_interrupt(const InterruptFlag* flag) {
  if (interrupt_requested(flag)) return interrupted_error("interrupted");
  return {};
}

}  // namespace ckptstream
