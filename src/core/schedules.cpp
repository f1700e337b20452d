#include <cleave/core/detail/schedules.hpp>

#include <array>
#include <chrono>
#include <random>

#include <fmt/format.h>

namespace cleave::detail {

std::string random_schedule_id() {
  thread_local std::mt19937_64 random{std::random_device{}()};
  return fmt::format("{:016x}{:016x}", random(), random());
}

std::int64_t unix_now_ms() {
  return unix_ms_of(std::chrono::system_clock::now());
}

std::string insert_schedule(write_session& tx, const schedule_request& r) {
  const std::string id = r.id.empty() ? random_schedule_id() : std::string(r.id);
  std::string key = r.key.empty() ? id : std::string(r.key);
  const std::string payload = r.payload ? r.payload->dump() : std::string("{}");
  static const principal nobody;
  const principal& who = r.runs_as ? *r.runs_as : nobody;
  const std::string roles = json(who.roles).dump();
  const std::array<sql_value, 10> row{std::string_view(id),
                                      std::string_view(key),
                                      r.due_ms,
                                      r.command,
                                      std::string_view(payload),
                                      r.origin,
                                      r.instance,
                                      std::string_view(who.subject),
                                      std::string_view(roles),
                                      r.now_ms};
  tx.exec(
      "insert into cleave_schedules(id, key, due_ms, command, payload, origin, instance, subject, "
      "roles, state, created_ms) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10) "
      "on conflict(key) do update set id = excluded.id, due_ms = excluded.due_ms, "
      "command = excluded.command, payload = excluded.payload, origin = excluded.origin, "
      "instance = excluded.instance, subject = excluded.subject, roles = excluded.roles, "
      "state = 'pending', attempts = 0, last_error = null, created_ms = excluded.created_ms",
      row);
  return key;
}

bool cancel_schedule(write_session& tx, std::string_view key) {
  const sql_value k[] = {key};
  return tx.exec("delete from cleave_schedules where key = $1 and state = 'pending'", k) > 0;
}

bool claim_schedule(write_session& tx, std::string_view id) {
  const sql_value k[] = {id};
  return tx.exec("delete from cleave_schedules where id = $1 and state = 'pending'", k) > 0;
}

}  // namespace cleave::detail
