// A session: one pooled connection in a write or a read-only transaction. Appends events (the
// stream version checked), remembers a command's outcome for its retries (purging expired ones
// now and then), and commits, returning the position token with the commit's LSN.

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include <cleave/store/detail/append.hpp>
#include <cleave/store/detail/failure.hpp>

#include "store_impl.hpp"

namespace cleave::postgres {

namespace {

using detail::connection;
using detail::parse_lsn;
using detail::parse_u64;

std::string retention_interval(std::chrono::seconds s) {
  return fmt::format("{} seconds", s.count());
}

}  // namespace

std::uint64_t store::impl::session::append(const pending_event& e) {
  std::int64_t version = 0;
  if (!e.stream.empty()) {
    const sql_value stream[] = {e.stream};
    const auto current = static_cast<std::uint64_t>(
        conn->run(cleave::detail::stream_version_sql, stream).integer(0, 0));
    version = static_cast<std::int64_t>(
        cleave::detail::next_stream_version(e.stream, current, e.expected_version));
  }
  const std::string payload = e.payload.dump();
  const auto params =
      cleave::detail::event_row_params(e, version, payload, command_id, correlation_id);
  auto r = conn->run(
      "insert into cleave_events(stream, stream_version, type, payload, command_id, "
      "correlation_id) values ($1, $2, $3, $4::jsonb, $5, $6) "
      "returning position, transaction_id::text",
      params);
  last_position = static_cast<std::uint64_t>(r.integer(0, 0));
  transaction_id = parse_u64(r.text(0, 1));
  return static_cast<std::uint64_t>(version);
}

std::optional<remembered_outcome> store::impl::session::remembered() {
  const auto keep = retention_interval(owner->opts.outcome_retention);
  const sql_value key[] = {std::string_view(command_id), std::string_view(keep)};
  auto r = conn->run(
      // The commit's LSN is not known inside its transaction; the primary's WAL position now
      // is past it, so a standby that has replayed that much has the command's effects.
      "select command_type, outcome::text, transaction_id::text, position, "
      "coalesce(lsn, pg_current_wal_lsn())::text "
      "from cleave_commands where command_id = $1 and recorded_at >= now() - $2::interval",
      key);
  if (r.rows() == 0) return std::nullopt;
  auto stored = parse_json(r.text(0, 1));
  auto prior = stored ? outcome_from_json(*stored) : std::unexpected(stored.error());
  if (!prior) throw error_exception(prior.error());
  prior->command_type = r.text(0, 0);
  prior->position =
      position_token(parse_u64(r.text(0, 2)), static_cast<std::uint64_t>(r.integer(0, 3)),
                     r.is_null(0, 4) ? 0 : parse_lsn(r.text(0, 4)));
  return std::move(*prior);
}

void store::impl::session::remember(const remembered_outcome& outcome) {
  const std::string text = outcome_to_json(outcome).dump();
  const auto keep = retention_interval(owner->opts.outcome_retention);
  const std::string xid = std::to_string(transaction_id);  // 0 when nothing was appended
  const sql_value row[] = {std::string_view(command_id),
                           std::string_view(outcome.command_type),
                           std::string_view(text),
                           std::string_view(xid),
                           static_cast<std::int64_t>(last_position),
                           std::string_view(keep)};
  // A live record for the id means a racing retry won: no row changes, and this transaction
  // is a conflict. An expired one not yet purged gives way.
  auto r = conn->run(
      "insert into cleave_commands(command_id, command_type, outcome, transaction_id, "
      "position) "
      "values ($1, $2, $3::jsonb, $4::text::xid8, $5) "
      "on conflict (command_id) do update set command_type = excluded.command_type, "
      "  outcome = excluded.outcome, transaction_id = excluded.transaction_id, "
      "  position = excluded.position, recorded_at = now() "
      "where cleave_commands.recorded_at < now() - $6::interval",
      row);
  if (r.affected() == 0)
    throw error_exception(
        {errc::conflict,
         fmt::format("command id '{}' was recorded by a concurrent retry", command_id),
         {}});
  if (owner->outcomes_recorded.fetch_add(1) % cleave::detail::outcome_purge_every ==
      cleave::detail::outcome_purge_every - 1) {
    const sql_value older[] = {std::string_view(keep)};
    conn->run("delete from cleave_commands where recorded_at < now() - $1::interval", older);
  }
}

void store::impl::session::rebind(const request_meta& meta) {
  // (Under group commit each member's own deadline guards its statements; the server-side
  // timeouts stay those the group's transaction began with.)
  deadline = meta.deadline;
  conn->guard_until(grace_after(meta.deadline));
  command_id.assign(meta.command_id);
  correlation_id.assign(meta.correlation_id);
  conn->set_correlation_id(meta.correlation_id);
}

// One round trip: the transaction's id (when it has one: it wrote), COMMIT, and the WAL position
// after it, each answer read on its own. COMMIT answered is the outcome. When the connection
// breaks before COMMIT's answer, the transaction id says where to ask what became of it; without
// one the transaction wrote nothing and committing it or not is the same.
position_token store::impl::session::commit() {
  // Past the deadline nothing is sent: the answer is a definite timeout, not an unknown commit.
  if (conn->out_of_time()) {
    rollback();
    cleave::detail::throw_deadline_passed("before the command committed");
  }
  auto answers = conn->script_results(
      "select pg_current_xact_id_if_assigned()::text; commit; select pg_current_wal_lsn()::text");
  const auto ok = [&](std::size_t i) {
    return answers.size() > i &&
           (answers[i].status() == PGRES_TUPLES_OK || answers[i].status() == PGRES_COMMAND_OK);
  };
  std::optional<std::uint64_t> xid;
  if (ok(0)) xid = answers[0].is_null(0, 0) ? 0 : parse_u64(answers[0].text(0, 0));
  if (transaction_id != 0) xid = transaction_id;
  const std::uint64_t lsn = ok(2) ? parse_lsn(answers[2].text(0, 0)) : 0;
  const bool committed = ok(1) && answers[1].command_tag() == "COMMIT";
  if (!committed && conn->healthy()) {
    // A definite refusal (a serialization failure at commit, a deferred constraint): the
    // transaction is rolled back; its error says why.
    for (auto& a : answers)
      if (a.status() == PGRES_FATAL_ERROR) {
        try {
          conn->raise(std::move(a), "committing");
        } catch (...) {
          rollback();  // gives the session back: after the error is made
          throw;
        }
      }
    rollback();
    throw error_exception({errc::internal, "the transaction was rolled back at its commit", {}});
  }
  const bool appended = transaction_id != 0;
  // What is needed after the session is given back (another request may take it at once).
  const position_token so_far(transaction_id, last_position, lsn);
  impl& pool = *owner;
  const auto until = deadline;
  pool.give_back(this);  // a broken connection is replaced
  if (!committed) {
    if (xid == 0u) return position_token(0, 0, 0);  // it wrote nothing
    if (!xid)
      throw error_exception({errc::outcome_unknown,
                             "the connection to the database was lost while the command "
                             "committed, and whether it did is unknown: retry it with the same "
                             "command id",
                             {}});
    pool.resolve_commit(*xid, until);
  }
  if (appended) pool.announce_commit();
  return so_far;
}

void store::impl::resolve_commit(std::uint64_t xid, clock::time_point deadline) {
  // A few seconds at least (the server may be restarting), and not for ever.
  const auto now = clock::now();
  const auto until =
      std::clamp(deadline, now + std::chrono::seconds(2), now + std::chrono::seconds(10));
  const std::string id = std::to_string(xid);
  auto pause = std::chrono::milliseconds(20);
  for (;;) {
    std::string status;  // "in progress" until the server has ended the broken connection's
    try {
      connection asking(opts.url);
      asking.guard_until(until);  // (one connection per question: a fresh one each time)
      const sql_value param[] = {std::string_view(id)};
      auto r = asking.run("select coalesce(pg_xact_status($1::xid8), 'unknown')", param);
      status = r.text(0, 0);
    } catch (const error_exception& e) {
      // Not reachable yet (restarting): ask again.
      if (e.error().category != errc::unavailable && e.error().category != errc::timeout) throw;
    }
    if (status == "committed") return;
    if (status == "aborted")
      throw error_exception({errc::unavailable,
                             "the connection to the database was lost before the command "
                             "committed, and it did not: try again",
                             {}});
    if (clock::now() + pause >= until) break;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(500));
  }
  throw error_exception({errc::outcome_unknown,
                         "the connection to the database was lost while the command committed, "
                         "and whether it did could not be learned in time: retry it with the "
                         "same command id",
                         {}});
}

void store::impl::session::rollback() noexcept {
  try {
    // Past the deadline too: a rollback that is answered keeps the connection.
    if (conn->healthy()) conn->guard_until(clock::now() + std::chrono::seconds(1));
    conn->script("rollback");
  } catch (...) {
    // A broken connection is replaced when given back.
  }
  owner->give_back(this);
}

}  // namespace cleave::postgres
