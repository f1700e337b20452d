// Reading the event log: batches of events (all, or of some types), spans (how many events and
// the last one), the head and the distance to it. One writer at a time, so positions commit in
// order and every read is gap-safe as it is.

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "store_impl.hpp"

namespace cleave::sqlite {

namespace {

using detail::connection;
using detail::reset_on_exit;
using detail::run_query;
using detail::scalar;

// The columns of `fields`, in the order read_events_into reads them. A read of one type has
// NULL for the type (every row has that type): a column less to read in each row.
std::string columns_of(event_fields fields, std::size_t types) {
  const std::string_view type = types == 1 ? "null" : "type";
  return fields == event_fields::all
             ? fmt::format(
                   "position, {}, payload, stream, stream_version, command_id, correlation_id, "
                   "recorded_at",
                   type)
             : fmt::format("position, {}, payload", type);
}

// Events after a position ($1), at most $2 of them; with `types` > 0 also up to a position ($3)
// and of some types ($4 onwards): a list of values, which SQLite checks faster than a table.
std::string select_events(event_fields fields, std::size_t types) {
  if (types == 0)
    return fmt::format(
        "select {} from cleave_events where position > $1 order by position limit $2",
        columns_of(fields, types));
  std::string list;
  for (std::size_t i = 0; i < types; ++i) list += fmt::format("{}${}", i ? ", " : "", i + 4);
  return fmt::format(
      "select {} from cleave_events where position > $1 and position <= $3 and type in ({}) "
      "order by position limit $2",
      columns_of(fields, types), list);
}

}  // namespace

position_token store::read_events_into(position_token after, std::size_t limit,
                                       std::vector<stored_event>& out,
                                       std::span<const std::string> types, event_fields fields) {
  return impl_->read([&](connection& conn) {
    // Of some types: up to the head as this read transaction sees it (one writer at a time, so
    // every event up to it has committed).
    const auto end = types.empty() ? 0 : scalar(conn, detail::select_head);
    std::vector<sql_value> params{static_cast<std::int64_t>(after.position()),
                                  static_cast<std::int64_t>(limit), end};
    for (const auto& type : types) params.emplace_back(std::string_view(type));
    auto& s = conn.prepare(select_events(fields, types.size()),
                           types.empty() ? std::span(params).first(2) : std::span(params));
    reset_on_exit guard{s};
    out.reserve(std::min<std::size_t>(limit, 1 << 16));
    std::size_t n = 0;
    while (s.step()) {
      auto& e = n < out.size() ? out[n] : out.emplace_back();
      ++n;
      e.position = position_token(0, static_cast<std::uint64_t>(s.int_at(0)));
      // (A read of one type has no type column: see columns_of.)
      e.type.assign(types.size() == 1 ? std::string_view(types[0]) : s.text_at(1));
      e.payload.assign_text(s.text_at(2));
      if (fields == event_fields::all) {
        e.stream.assign(s.text_at(3));
        e.stream_version = static_cast<std::uint64_t>(s.int_at(4));
        e.command_id.assign(s.text_at(5));
        e.correlation_id.assign(s.text_at(6));
        e.recorded_at_ms = s.int_at(7);
      } else {
        cleave::detail::clear_envelope(e);
      }
    }
    out.resize(n);
    if (n > 0 && (n == limit || types.empty())) return out.back().position;
    if (types.empty() || limit == 0) return after;
    return std::max(after, position_token(0, static_cast<std::uint64_t>(end)));
  });
}

position_token store::head() {
  return impl_->read([](connection& conn) {
    return position_token(0, static_cast<std::uint64_t>(scalar(conn, detail::select_head)));
  });
}

position_token store::head_in(read_session& tx) {
  std::int64_t head = 0;
  tx.query(detail::select_head, {},
           [&](const row_view& row) { head = std::get<std::int64_t>(row.get(0)); });
  return position_token(0, static_cast<std::uint64_t>(head));
}

log_span store::read_span(position_token after, std::size_t limit, position_token until) {
  return impl_->read([&](connection& conn) {
    log_span out;
    const sql_value params[] = {static_cast<std::int64_t>(after.position()),
                                until.empty() ? std::numeric_limits<std::int64_t>::max()
                                              : static_cast<std::int64_t>(until.position()),
                                static_cast<std::int64_t>(limit)};
    run_query(conn,
              "select count(*), coalesce(max(position), 0) from (select position from "
              "cleave_events where position > $1 and position <= $2 order by position limit $3)",
              params, [&](const row_view& row) {
                out.events = static_cast<std::uint64_t>(std::get<std::int64_t>(row.get(0)));
                if (out.events)
                  out.last = position_token(
                      0, static_cast<std::uint64_t>(std::get<std::int64_t>(row.get(1))));
              });
    return out;
  });
}

position_token store::readable_head() {
  return head();  // one writer at a time: positions commit in order
}

log_distance store::distance(position_token after) {
  return impl_->read([&](connection& conn) {
    log_distance d;
    const sql_value from[] = {static_cast<std::int64_t>(after.position())};
    run_query(conn,
              "select count(*), coalesce(min(recorded_at), 0) from cleave_events where position > "
              "$1",
              from, [&](const row_view& row) {
                d.events = static_cast<std::uint64_t>(std::get<std::int64_t>(row.get(0)));
                d.oldest_recorded_at_ms = std::get<std::int64_t>(row.get(1));
              });
    return d;
  });
}

}  // namespace cleave::sqlite
