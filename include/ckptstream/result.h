// Errors as values. Every fallible function returns Result<T> (or Status = Result<void>);
// an Error carries a kind (which decides the process exit code) and a message that names the
// file and what is wrong. Context is prepended as the error travels up ("model.pt: data.pkl: ...").
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace ckptstream {

enum class ErrorKind {
  kInvalidInput,  // the input is malformed (truncated, corrupt, inconsistent)
  kUnsupported,   // the input is well-formed but uses something we do not handle
  kIo,            // the operating system refused (open, read, write, rename)
  kMismatch,      // verification found a difference
  kUsage,         // bad arguments or options
  kInterrupted,   // stopped on request (SIGINT, SIGTERM, SIGHUP) before finishing
};

struct Error {
  ErrorKind kind = ErrorKind::kInvalidInput;
  std::string message;

  // Returns the same error with "context: " in front of the message.
  Error with_context(const std::string& context) const {
    return Error{kind, context + ": " + message};
  }
};

inline Error invalid_input(std::string message) {
  return Error{ErrorKind::kInvalidInput, std::move(message)};
}
inline Error unsupported(std::string message) {
  return Error{ErrorKind::kUnsupported, std::move(message)};
}
inline Error io_error(std::string message) {
  return Error{ErrorKind::kIo, std::move(message)};
}
inline Error mismatch(std::string message) {
  return Error{ErrorKind::kMismatch, std::move(message)};
}
inline Error usage_error(std::string message) {
  return Error{ErrorKind::kUsage, std::move(message)};
}
inline Error interrupted_error(std::string message) {
  return Error{ErrorKind::kInterrupted, std::move(message)};
}

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : state_(std::move(error)) {}  // NOLINT

  bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(state_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(state_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(state_));
  }
  const Error& error() const {
    assert(!ok());
    return std::get<1>(state_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Error> state_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT

  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const {
    assert(failed_);
    return error_;
  }

 private:
  Error error_;
  bool failed_ = false;
};

using Status = Result<void>;

}  // namespace ckptstream

#define CKPT_CONCAT_INNER(a, b) a##b
#define CKPT_CONCAT(a, b) CKPT_CONCAT_INNER(a, b)

// Returns the error of a failed Status/Result from the enclosing function.
#define CKPT_TRY(expr)                                         \
  do {                                                         \
    auto&& ckpt_try_result = (expr);                           \
    if (!ckpt_try_result.ok()) return ckpt_try_result.error(); \
  } while (0)

// Like CKPT_TRY, prefixing the error message with a context string.
#define CKPT_TRY_CTX(expr, context)                                                  \
  do {                                                                               \
    auto&& ckpt_try_result = (expr);                                                 \
    if (!ckpt_try_result.ok()) return ckpt_try_result.error().with_context(context); \
  } while (0)

// `CKPT_ASSIGN_OR_RETURN(auto x, f());` declares x from a successful Result or returns its error.
#define CKPT_ASSIGN_OR_RETURN(lhs, expr) \
  CKPT_ASSIGN_OR_RETURN_IMPL(CKPT_CONCAT(ckpt_result_, __LINE__), lhs, expr)
#define CKPT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.error();               \
  lhs = std::move(tmp).value()
