// The transactions the store lends out: the single writer (appends events with their stream
// version checked, remembers a command's outcome for its retries, commits and gives the write lock
// back) and the read-only readers.

#include <chrono>
#include <optional>
#include <string>

#include <fmt/format.h>

#include <cleave/store/detail/append.hpp>
#include <cleave/store/detail/failure.hpp>

#include "store_impl.hpp"

namespace cleave::sqlite {

namespace {

using detail::reset_on_exit;
using detail::scalar;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::uint64_t store::impl::writer::append(const pending_event& e) {
  auto& conn = *owner->write_conn;
  std::int64_t version = 0;
  if (!e.stream.empty()) {
    const sql_value stream[] = {e.stream};
    const auto current =
        static_cast<std::uint64_t>(scalar(conn, cleave::detail::stream_version_sql, stream));
    version = static_cast<std::int64_t>(
        cleave::detail::next_stream_version(e.stream, current, e.expected_version));
  }
  // PostgreSQL's jsonb cannot hold U+0000; refused here too, for one meaning on both.
  if (cleave::detail::nul_in_json(e.payload))
    cleave::detail::throw_db_failure(cleave::detail::db_failure::nul_character,
                                     fmt::format("an event of type '{}' holds U+0000", e.type),
                                     correlation_id);
  const std::string payload = e.payload.dump();
  const auto params =
      cleave::detail::event_row_params(e, version, payload, command_id, correlation_id, now_ms());
  conn.exec(
      "insert into cleave_events(stream, stream_version, type, payload, command_id, "
      "correlation_id, recorded_at) values ($1, $2, $3, $4, $5, $6, $7)",
      params);
  last_position = sqlite3_last_insert_rowid(conn.handle());
  return static_cast<std::uint64_t>(version);
}

std::optional<remembered_outcome> store::impl::writer::remembered() {
  const auto oldest =
      now_ms() -
      std::chrono::duration_cast<std::chrono::milliseconds>(owner->opts.outcome_retention).count();
  const sql_value key[] = {std::string_view(command_id), oldest};
  auto& s = owner->write_conn->prepare(
      "select command_type, outcome, position from cleave_commands where command_id = $1 "
      "and recorded_at >= $2",
      key);
  reset_on_exit guard{s};
  if (!s.step()) return std::nullopt;
  auto stored = parse_json(s.text_at(1));
  auto prior = stored ? outcome_from_json(*stored) : std::unexpected(stored.error());
  if (!prior) throw error_exception(prior.error());
  prior->command_type = s.text_at(0);
  prior->position = position_token(0, static_cast<std::uint64_t>(s.int_at(2)));
  return std::move(*prior);
}

void store::impl::writer::remember(const remembered_outcome& outcome) {
  auto& conn = *owner->write_conn;
  const std::string text = outcome_to_json(outcome).dump();
  const auto now = now_ms();
  const auto position = static_cast<std::int64_t>(position_so_far().position());
  // `insert or replace`: an outcome that expired but was not purged yet gives way. (SQLite
  // runs one writer at a time, so a live record was already found by remembered().)
  const sql_value row[] = {std::string_view(command_id), std::string_view(outcome.command_type),
                           std::string_view(text), position, now};
  conn.exec(
      "insert or replace into cleave_commands(command_id, command_type, outcome, position, "
      "recorded_at) values ($1, $2, $3, $4, $5)",
      row);
  if (++owner->outcomes_recorded % cleave::detail::outcome_purge_every == 0) {
    const sql_value oldest[] = {
        now - std::chrono::duration_cast<std::chrono::milliseconds>(owner->opts.outcome_retention)
                  .count()};
    conn.exec("delete from cleave_commands where recorded_at < $1", oldest);
  }
}

void store::impl::writer::rebind(const request_meta& meta) {
  command_id.assign(meta.command_id);
  correlation_id.assign(meta.correlation_id);
  owner->write_conn->set_correlation_id(meta.correlation_id);
}

position_token store::impl::writer::commit() {
  auto& conn = *owner->write_conn;
  try {
    position_so_far();
    conn.exec("commit", {});
  } catch (...) {
    rollback();
    throw;
  }
  const auto position = static_cast<std::uint64_t>(last_position);
  owner->commits.fetch_add(1, std::memory_order_release);
  owner->write_mutex.unlock();
  return position_token(0, position);
}

void store::impl::writer::rollback() noexcept {
  try {
    owner->write_conn->exec("rollback", {});
  } catch (...) {
    // A failed rollback leaves SQLite's own automatic rollback; nothing more to undo.
  }
  owner->write_mutex.unlock();
}

void store::impl::reader::finish() noexcept {
  try {
    conn->exec("commit", {});
  } catch (...) {
    // A read-only transaction has nothing to lose; the connection stays usable.
  }
  owner->give_back(this);
}

}  // namespace cleave::sqlite
