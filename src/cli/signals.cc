#include "cli/signals.h"

#include <pthread.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <string>

namespace ckptstream::cli {
namespace {

// Wakes the watching thread when the watcher is destroyed; not one a user sends.
constexpr int kWakeSignal = SIGUSR2;

sigset_t watched_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, kWakeSignal}) sigaddset(&set, sig);
  return set;
}

void say(const std::string& text) {
  ssize_t ignored = ::write(STDERR_FILENO, text.data(), text.size());
  (void)ignored;
}

}  // namespace

const char* signal_name(int signal) {
  switch (signal) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGHUP:
      return "SIGHUP";
    default:
      return "a signal";
  }
}

SignalWatcher::SignalWatcher() {
  sigset_t set = watched_signals();
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  thread_ = std::thread([this] { watch(); });
}

SignalWatcher::~SignalWatcher() {
  stopping_.store(true);
  ::pthread_kill(thread_.native_handle(), kWakeSignal);
  thread_.join();
}

void SignalWatcher::watch() {
  sigset_t set = watched_signals();
  for (;;) {
    int sig = 0;
    if (::sigwait(&set, &sig) != 0) continue;
    if (sig == kWakeSignal) {
      if (stopping_.load()) return;
      continue;  // sent by someone else: not ours to act on
    }
    int expected = 0;
    if (signal_.compare_exchange_strong(expected, sig)) {
      requested_.store(true);
      say(std::string("\nckptstream: ") + signal_name(sig) +
          " received: stopping and removing the partial output (send it again to stop at "
          "once)\n");
      continue;
    }
    say(std::string("\nckptstream: stopped at once by a second ") + signal_name(sig) +
        "; the next run into the same target removes what this one left\n");
    ::_exit(128 + signal_.load());
  }
}

}  // namespace ckptstream::cli
