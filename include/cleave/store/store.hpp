#pragma once
// The storage interface every backend implements: transactions for the buses (session_source),
// the event log read in commit order, and versioned migrations.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/core/json.hpp>
#include <cleave/core/position.hpp>
#include <cleave/core/session.hpp>

namespace cleave {

// One event as the log holds it.
struct stored_event {
  position_token position;
  std::string stream;                // empty for an event of no stream
  std::uint64_t stream_version = 0;  // 1 for a stream's first event; 0 without a stream
  std::string type;                  // the wire name it was stored under
  json payload;
  std::string command_id;           // the command that wrote it, when the caller gave an id
  std::string correlation_id;       // the request it came from
  std::int64_t recorded_at_ms = 0;  // Unix time, milliseconds
};

// One step of a schema: applied once, in version order, in a transaction of its own.
struct migration {
  int version;
  std::string_view name;
  std::string_view sql;  // one or more statements
};

// A database behind the buses. Thread-safe.
class store : public session_source {
 public:
  // Up to `limit` committed events after `after`, in the order the log is read. Gap-safe: never
  // returns an event past one that a still-running transaction may yet commit before it.
  virtual std::vector<stored_event> read_events(position_token after, std::size_t limit) = 0;

  // The position of the newest event a reader may see now (the empty token for an empty log).
  virtual position_token head() = 0;

  // Applies the migrations of `component` (cleave's own, an application's, a projection's) that
  // this database has not had yet. Safe to run twice, and from two processes at once.
  virtual void migrate(std::string_view component, std::span<const migration> migrations) = 0;

  // The versions of `component` applied so far, ascending.
  virtual std::vector<int> applied_migrations(std::string_view component) = 0;
};

}  // namespace cleave
