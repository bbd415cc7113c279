// Status and Result<T>: fedtail's error values.
//
// Fallible functions return a Status (or a Result<T>, a value or a Status). A Status is cheap to
// copy when OK and carries a code and a message naming the bad field, file or client otherwise.
// Both are [[nodiscard]]. Thread-compatible: distinct objects may be used from distinct threads.
#ifndef FEDTAIL_COMMON_BASE_STATUS_H_
#define FEDTAIL_COMMON_BASE_STATUS_H_

#include <optional>
#include <string>
#include <utility>

namespace fedtail {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // a caller-supplied value is wrong (config, flag, shape)
  kNotFound,            // a file, tensor or client does not exist
  kCorruption,          // checksum, truncated data, NaN/Inf, malformed bytes
  kIOError,             // the operating system refused a read or write
  kUnavailable,         // a peer or resource is temporarily unreachable; retrying may help
  kDeadlineExceeded,    // a deadline passed
  kFailedPrecondition,  // the system is not in a state where the call can succeed
  kResourceExhausted,   // a size or quota limit was exceeded
  kInternal,            // a bug or an unexpected library failure
};

// Returns the code's name, e.g. "InvalidArgument".
const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string m) {
    return {StatusCode::kInvalidArgument, std::move(m)};
  }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status Corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
  static Status IOError(std::string m) { return {StatusCode::kIOError, std::move(m)}; }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status DeadlineExceeded(std::string m) {
    return {StatusCode::kDeadlineExceeded, std::move(m)};
  }
  static Status FailedPrecondition(std::string m) {
    return {StatusCode::kFailedPrecondition, std::move(m)};
  }
  static Status ResourceExhausted(std::string m) {
    return {StatusCode::kResourceExhausted, std::move(m)};
  }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "InvalidArgument: config.rounds: must be >= 1 (got 0)", or "OK".
  std::string to_string() const;

  // Returns a copy whose message is "<prefix>: <message>"; OK stays OK.
  Status with_context(const std::string& prefix) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// A value of type T, or the non-OK Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) status_ = Status::Internal("Result constructed from an OK status");
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  // Precondition: ok().
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

// Logs the message and aborts: for broken invariants (bugs), never for expected failures.
[[noreturn]] void check_failed(const char* file, int line, const char* condition);

}  // namespace fedtail

#define FEDTAIL_CHECK(cond) \
  ((cond) ? static_cast<void>(0) : ::fedtail::check_failed(__FILE__, __LINE__, #cond))

#define FEDTAIL_CONCAT_INNER_(a, b) a##b
#define FEDTAIL_CONCAT_(a, b) FEDTAIL_CONCAT_INNER_(a, b)

// Returns the Status of `expr` from the enclosing function when it is not OK.
#define FEDTAIL_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::fedtail::Status fedtail_status_ = (expr);        \
    if (!fedtail_status_.ok()) return fedtail_status_; \
  } while (0)

// Declares `lhs` from the value of a Result, or returns its Status from the enclosing function.
#define FEDTAIL_ASSIGN_OR_RETURN(lhs, expr) \
  FEDTAIL_ASSIGN_OR_RETURN_IMPL_(FEDTAIL_CONCAT_(fedtail_result_, __LINE__), lhs, expr)
#define FEDTAIL_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return tmp.status();                  \
  lhs = std::move(tmp).value()

#endif  // FEDTAIL_COMMON_BASE_STATUS_H_
