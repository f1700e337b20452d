#pragma once
// Expected outcomes as values: cleave::result<T> is a std::expected<T, cleave::error>.

#include <expected>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cleave {

// What kind of failure an error is; transports map it (HTTP status, exit code).
enum class errc {
  validation,    // the message is malformed or breaks a declared constraint
  not_found,     // what the message names does not exist
  conflict,      // a concurrent change won (version mismatch, unique key); retrying may succeed
  rejected,      // a business rule refused the command
  unavailable,   // infrastructure cannot serve now (database down, consistency not reachable)
  unauthorized,  // no or bad credentials
  forbidden,     // the principal may not do this
  internal,      // a bug or an unexpected failure; details go to the log, not the caller
  // A command id (idempotency key) that was already used for another command type or another
  // payload; retrying never succeeds (HTTP 422, /problems/idempotency-key-reused).
  idempotency_key_reused,
  // The request's deadline passed before it finished (a lock held elsewhere, a slow statement, no
  // free connection); nothing it did was kept. Retrying may succeed (HTTP 503, /problems/timeout).
  timeout,
  // The connection was lost while a command committed, and whether it committed could not be
  // learned: retry it with the same command id (Idempotency-Key), which applies it at most once
  // (HTTP 503, /problems/outcome-unknown).
  outcome_unknown,
};

// The stable lower-case name of a category ("validation", "not_found", ...).
std::string_view to_string(errc category) noexcept;
// The category with that name; nullopt for any other text.
std::optional<errc> errc_from_string(std::string_view name) noexcept;

// One problem with one member of a message, named by its JSON path ("lines[0].quantity").
struct field_error {
  std::string path;
  std::string message;
  friend bool operator==(const field_error&, const field_error&) = default;
};

// An expected failure: a category, a human-readable message, and optional per-field problems.
struct error {
  errc category = errc::internal;
  std::string message;
  std::vector<field_error> fields;

  // "validation: quantity: must be positive" — the message followed by every field problem.
  std::string describe() const;
};

// A T or the error that stopped it: std::expected<T, cleave::error>, marked [[nodiscard]] so that
// a dropped outcome (a send, an ask, a check) is a warning where it is dropped.
template <class T>
class [[nodiscard]] result : public std::expected<T, error> {
 public:
  using std::expected<T, error>::expected;
  result() = default;
  result(const std::expected<T, error>& other) : std::expected<T, error>(other) {}        // NOLINT
  result(std::expected<T, error>&& other) : std::expected<T, error>(std::move(other)) {}  // NOLINT
};

// Shorthands for handlers: `return cleave::rejected("stock is short");`
inline std::unexpected<error> fail(errc category, std::string message,
                                   std::vector<field_error> fields = {}) {
  return std::unexpected<error>(error{category, std::move(message), std::move(fields)});
}
inline std::unexpected<error> rejected(std::string message) {
  return fail(errc::rejected, std::move(message));
}
inline std::unexpected<error> not_found(std::string message) {
  return fail(errc::not_found, std::move(message));
}
inline std::unexpected<error> conflict(std::string message) {
  return fail(errc::conflict, std::move(message));
}
inline std::unexpected<error> invalid(std::string path, std::string message) {
  std::string summary = path.empty() ? message : path + ": " + message;
  return fail(errc::validation, std::move(summary), {{std::move(path), std::move(message)}});
}

// An error carried through code that throws (infrastructure layers). The buses catch it at their
// boundary and return its error unchanged; any other exception becomes errc::internal.
class error_exception : public std::runtime_error {
 public:
  explicit error_exception(cleave::error e);
  const cleave::error& error() const noexcept { return error_; }

 private:
  cleave::error error_;
};

// A failure that says nothing about the command itself: the database gave up this transaction to
// keep concurrent ones serializable (a serialization failure, a deadlock). Its category is
// errc::conflict. The command bus runs the whole command again, a few times, before passing it on.
class transient_error : public error_exception {
 public:
  using error_exception::error_exception;
};

}  // namespace cleave
