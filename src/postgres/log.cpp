// Reading the event log, gap-safely: by (transaction id, position) and only below the oldest
// running transaction, so that no event can later appear before one already read. Batches of
// events (all, or of some types), spans (how many events and the last one), the head and the
// distance to it.

#include <algorithm>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "store_impl.hpp"

namespace cleave::postgres {

namespace {

using detail::connection;
using detail::parse_lsn;
using detail::parse_u64;
using detail::result_set;

// A binary timestamptz (microseconds since 2000-01-01 UTC) as Unix milliseconds, rounded half away
// from zero as `(extract(epoch from t) * 1000)::bigint` does.
std::int64_t unix_ms_of(std::int64_t pg_micros) {
  constexpr std::int64_t unix_micros_at_2000 = 946'684'800'000'000;
  const std::int64_t us = pg_micros + unix_micros_at_2000;
  return us >= 0 ? (us + 500) / 1000 : -((-us + 500) / 1000);
}

// Gap-safe: only transactions older than every running one, in (transaction, position) order.
// Read with binary results: the ids, numbers and time travel as 8 bytes, without the server's text
// conversions (text columns are the same bytes either way).
// The columns read of each event: these first, then (event_fields::all) the envelope's.
constexpr std::string_view payload_columns = "transaction_id, position, type, payload::text";
constexpr std::string_view envelope_columns =
    ", stream, stream_version, command_id, correlation_id, recorded_at";
constexpr std::string_view from_events =
    " from cleave_events "
    "where (transaction_id, position) > ($1::text::xid8, $2) "
    "  and transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
    // Qualified: the output column `transaction_id` is text, and would sort as text.
    "order by cleave_events.transaction_id, cleave_events.position limit $3";
// The same, of some types ($6, a JSON array) and up to a position ($4, $5): a gap-safe end found
// first, so the bound holds whatever commits meanwhile.
constexpr std::string_view from_events_of =
    " from cleave_events "
    "where (transaction_id, position) > ($1::text::xid8, $2) "
    "  and (transaction_id, position) <= ($4::text::xid8, $5) "
    "  and type = any(array(select jsonb_array_elements_text($6::jsonb))) "
    "order by cleave_events.transaction_id, cleave_events.position limit $3";

std::string select_events(event_fields fields, bool of_types) {
  return fmt::format("select {}{}{}", payload_columns,
                     fields == event_fields::all ? envelope_columns : std::string_view(),
                     of_types ? from_events_of : from_events);
}

// The event types a read is limited to, as the JSON array from_events_of takes apart.
std::string json_array_of(std::span<const std::string> types) {
  json out = json::array();
  for (const auto& type : types) out.push_back(type);
  return out.dump();
}

}  // namespace

position_token store::read_events_into(position_token after, std::size_t limit,
                                       std::vector<stored_event>& out,
                                       std::span<const std::string> types, event_fields fields) {
  // Of some types: first the newest event a gap-safe reader sees (every event up to it has
  // committed; later commits come after it), then the events up to it.
  const auto end = types.empty() ? position_token{} : readable_head();
  return impl_->read([&](connection& conn) {
    const std::string xid = std::to_string(after.transaction()),
                      end_xid = std::to_string(end.transaction()),
                      type_list = types.empty() ? std::string() : json_array_of(types);
    const sql_value params[] = {std::string_view(xid),
                                static_cast<std::int64_t>(after.position()),
                                static_cast<std::int64_t>(limit),
                                std::string_view(end_xid),
                                static_cast<std::int64_t>(end.position()),
                                std::string_view(type_list)};
    auto r =
        conn.run(select_events(fields, !types.empty()),
                 types.empty() ? std::span(params).first(3) : std::span<const sql_value>(params),
                 connection::result_format::binary);
    const auto rows = static_cast<std::size_t>(r.rows());
    out.resize(rows);
    for (std::size_t i = 0; i < rows; ++i) {
      auto& e = out[i];
      const int row = static_cast<int>(i);
      e.position = position_token(r.binary_u64(row, 0), r.binary_u64(row, 1));
      e.type.assign(r.text(row, 2));
      e.payload.assign_text(r.text(row, 3));
      if (fields == event_fields::all) {
        e.stream.assign(r.text(row, 4));
        e.stream_version = r.binary_u64(row, 5);
        e.command_id.assign(r.text(row, 6));
        e.correlation_id.assign(r.text(row, 7));
        e.recorded_at_ms = unix_ms_of(static_cast<std::int64_t>(r.binary_u64(row, 8)));
      } else {
        cleave::detail::clear_envelope(e);
      }
    }
    if (rows > 0 && (rows == limit || types.empty())) return out.back().position;
    if (types.empty() || limit == 0) return after;
    return std::max(after, end);
  });
}

position_token store::head() {
  // Bounded: health answers from it, and must not hang on a server that stopped answering.
  return impl_->read(
      [](connection& conn) {
        auto r = conn.run(
            "select transaction_id::text, position, pg_current_wal_lsn()::text from cleave_events "
            "order by cleave_events.transaction_id desc, cleave_events.position desc limit 1");
        if (r.rows() == 0) return position_token{};
        return position_token(parse_u64(r.text(0, 0)), static_cast<std::uint64_t>(r.integer(0, 1)),
                              parse_lsn(r.text(0, 2)));
      },
      std::chrono::milliseconds(2000));
}

// In `tx`'s snapshot (read transactions are repeatable read): the newest event it sees, and
// the WAL position it was read at — the primary's, or on a standby what it has replayed.
position_token store::head_in(read_session& tx) {
  position_token head;
  tx.query(
      "select transaction_id::text, position::text, coalesce((case when pg_is_in_recovery() "
      "then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text, '0/0') from "
      "cleave_events "
      "order by cleave_events.transaction_id desc, cleave_events.position desc limit 1",
      {}, [&](const row_view& row) {
        const auto text = [&](std::size_t i) { return std::get<std::string_view>(row.get(i)); };
        head = position_token(parse_u64(text(0)), parse_u64(text(1)), parse_lsn(text(2)));
      });
  return head;
}

log_span store::read_span(position_token after, std::size_t limit, position_token until) {
  if (limit == 0) return {};
  return impl_->read([&](connection& conn) {
    const std::string xid = std::to_string(after.transaction());
    // An empty `until` is no bound: the largest xid8 and position.
    const std::string until_xid =
        until.empty() ? "18446744073709551615" : std::to_string(until.transaction());
    const sql_value params[] = {std::string_view(xid), static_cast<std::int64_t>(after.position()),
                                std::string_view(until_xid),
                                until.empty() ? std::numeric_limits<std::int64_t>::max()
                                              : static_cast<std::int64_t>(until.position()),
                                static_cast<std::int64_t>(limit)};
    constexpr std::string_view range =
        "from cleave_events "
        "where (transaction_id, position) > ($1::text::xid8, $2) "
        "  and (transaction_id, position) <= ($3::text::xid8, $4) "
        "  and transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
        "order by cleave_events.transaction_id {0}, cleave_events.position {0} ";
    const std::string span = fmt::format(range, "asc");
    log_span out;
    const auto token = [](const result_set& r) {
      return position_token(parse_u64(r.text(0, 0)), static_cast<std::uint64_t>(r.integer(0, 1)));
    };
    // A whole span: its last event is the limit-th (an index-only scan that skips the others).
    const auto whole = [&] {
      auto r = conn.run(
          fmt::format("select transaction_id::text, position {} limit 1 offset $5 - 1", span),
          params);
      if (r.rows() == 1) out = {limit, token(r)};
      return r.rows() == 1;
    };
    // The last event in range (a backward index scan that stops at the first row).
    auto r = conn.run(
        fmt::format("select transaction_id::text, position {} limit 1", fmt::format(range, "desc")),
        std::span(params).first(4));
    if (r.rows() == 0) return out;
    const auto end = token(r);
    // Positions come from one sequence, so their difference tells which of the two counts is
    // likely to answer; the other one follows only when that guess was wrong.
    const bool likely_whole = end.position() >= after.position() + limit;
    if (likely_whole && whole()) return out;
    // Up to the last event: counted (an index-only scan), unless there are `limit` of them.
    const std::string end_xid = std::to_string(end.transaction());
    const sql_value upto[] = {std::string_view(xid), static_cast<std::int64_t>(after.position()),
                              std::string_view(end_xid), static_cast<std::int64_t>(end.position()),
                              static_cast<std::int64_t>(limit)};
    const auto n = static_cast<std::uint64_t>(
        conn.run(fmt::format("select count(*) from (select 1 {} limit $5) as span", span), upto)
            .integer(0, 0));
    if (n < limit) return log_span{n, end};
    whole();  // (a second try sees at least the `limit` events just counted: they have committed)
    return out;
  });
}

position_token store::readable_head() {
  return impl_->read([](connection& conn) {
    auto r = conn.run(
        "select transaction_id::text, position from cleave_events "
        "where transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
        "order by cleave_events.transaction_id desc, cleave_events.position desc limit 1");
    if (r.rows() == 0) return position_token{};
    return position_token(parse_u64(r.text(0, 0)), static_cast<std::uint64_t>(r.integer(0, 1)));
  });
}

log_distance store::distance(position_token after) {
  return impl_->read([&](connection& conn) {
    const std::string xid = std::to_string(after.transaction());
    const sql_value from[] = {std::string_view(xid), static_cast<std::int64_t>(after.position())};
    auto r = conn.run(
        "select count(*), coalesce((extract(epoch from min(recorded_at)) * 1000)::bigint, 0) "
        "from cleave_events where (transaction_id, position) > ($1::text::xid8, $2)",
        from);
    return log_distance{static_cast<std::uint64_t>(r.integer(0, 0)), r.integer(0, 1)};
  });
}

}  // namespace cleave::postgres
