#pragma once
// The table of scheduled commands (write_context::schedule, process managers) and the statements
// on it that run inside other transactions: scheduling, cancelling, and the claim a scheduled
// command's own transaction makes. The table is created by every backend's own migrations; the
// scheduler (cleave/workflow) reads it and sends what is due.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include <cleave/core/json.hpp>
#include <cleave/core/session.hpp>

namespace cleave::detail {

// The schema, alike on every backend. `id` is the command id the command is sent with; `key`
// what cancel_schedule() names (the id unless given); `origin` and `instance` the process manager
// (and its instance) that made it, empty for a command handler; `subject` and `roles` who it runs
// as; `state` 'pending' or 'failed' (refused, or out of attempts: kept to be looked at).
inline constexpr std::string_view schedules_schema =
    "create table cleave_schedules(id text primary key, key text not null unique,"
    "  due_ms bigint not null, command text not null, payload text not null,"
    "  origin text not null, instance text not null, subject text not null, roles text not null,"
    "  state text not null, attempts bigint not null default 0, last_error text,"
    "  created_ms bigint not null);"
    "create index cleave_schedules_due on cleave_schedules(state, due_ms)";

struct schedule_request {
  std::string_view id;       // unique among schedules ever made; empty: a random one
  std::string_view key;      // empty: the id
  std::int64_t due_ms = 0;   // Unix milliseconds
  std::string_view command;  // the command's wire name
  const json* payload = nullptr;
  std::string_view origin, instance;
  const principal* runs_as = nullptr;
  std::int64_t now_ms = 0;
};

// Stores a schedule in `tx`, replacing a pending or failed one with the same key; returns its key.
std::string insert_schedule(write_session& tx, const schedule_request& r);
// Deletes the schedule `key` in `tx` unless it is gone; true when it was pending.
bool cancel_schedule(write_session& tx, std::string_view key);
// Takes pending schedule `id` out of the table in the transaction of the command that carries it
// out; false when it is no longer pending (cancelled, replaced or sent already): the command must
// not run then.
bool claim_schedule(write_session& tx, std::string_view id);
// A random id: 32 hex digits.
std::string random_schedule_id();
// A time of the system clock in Unix milliseconds, as the schedule table holds it.
inline std::int64_t unix_ms_of(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}
// The current time in Unix milliseconds (the system clock).
std::int64_t unix_now_ms();

}  // namespace cleave::detail
