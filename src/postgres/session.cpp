// A session: one pooled connection in a write or a read-only transaction. Appends events (the
// stream version checked), remembers a command's outcome for its retries (purging expired ones
// now and then), and commits, returning the position token with the commit's LSN.

#include <optional>
#include <string>

#include <fmt/format.h>

#include <cleave/store/detail/append.hpp>

#include "store_impl.hpp"

namespace cleave::postgres {

namespace {

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
  command_id.assign(meta.command_id);
  correlation_id.assign(meta.correlation_id);
  conn->set_correlation_id(meta.correlation_id);
}

position_token store::impl::session::commit() {
  std::uint64_t lsn = 0;
  try {
    auto r = conn->script("commit; select pg_current_wal_lsn()::text");
    lsn = parse_lsn(r.text(0, 0));
  } catch (...) {
    rollback();
    throw;
  }
  const position_token token(transaction_id, last_position, lsn);
  const bool appended = transaction_id != 0;
  owner->give_back(this);
  if (appended) owner->announce_commit();
  return token;
}

void store::impl::session::rollback() noexcept {
  try {
    conn->script("rollback");
  } catch (...) {
    // A broken connection is replaced when given back.
  }
  owner->give_back(this);
}

}  // namespace cleave::postgres
