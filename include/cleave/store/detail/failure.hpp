#pragma once
// What both backends do alike when the database refuses a statement: the caller gets a plain
// sentence for the kind of failure, and the log gets the detail (SQL, the database's message,
// constraint names, values) with the correlation id.

#include <string_view>

#include <cleave/core/error.hpp>

namespace cleave::detail {

enum class db_failure {
  unique,               // a row with the same key exists
  foreign_key,          // a reference to a missing row, or from a remaining one
  check,                // a CHECK constraint
  not_null,             // a NOT NULL column given none
  raised,               // a trigger or function refused with its own message (author's text)
  stream_version,       // an append expected another stream version (cleave's own message)
  serialization,        // given up to keep transactions serializable (transient)
  deadlock,             // two transactions waited for each other (transient)
  read_only,            // a write in a read-only transaction
  read_only_database,   // a write while the database accepts none (read-only, in recovery)
  busy,                 // the database is busy (SQLite: another writer past the busy timeout)
  timeout,              // a statement or a lock wait ran past the request's deadline
  unavailable,          // the connection or the server failed
  nul_character,        // text with U+0000, which the database cannot store
  multiple_statements,  // more than one statement in an exec or query
  placeholders,         // placeholders other than $1, $2, …, or too few values for them
  other,
};

// Throws errc::timeout: "the request's deadline passed <when>" (nothing the request did is kept).
[[noreturn]] void throw_deadline_passed(std::string_view when);

// Logs `detail` (spdlog: error for bugs, warn when unavailable, debug for transient failures,
// info otherwise) and throws the plain error of `kind`: a cleave::transient_error for
// serialization failures and deadlocks, else a cleave::error_exception. `raised` is the message a
// trigger or function gave, passed on for db_failure::raised and db_failure::stream_version.
[[noreturn]] void throw_db_failure(db_failure kind, std::string_view detail,
                                   std::string_view correlation_id, std::string_view raised = {});

}  // namespace cleave::detail
