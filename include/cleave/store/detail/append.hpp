#pragma once
// What both backends do alike when appending an event and remembering outcomes.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <cleave/core/session.hpp>

namespace cleave::detail {

// Reads a stream's current version. `stream <> ''` lets the planner use the partial index on
// (stream, stream_version), which covers only events that belong to a stream.
inline constexpr std::string_view stream_version_sql =
    "select coalesce(max(stream_version), 0) from cleave_events where stream = $1 and stream <> ''";

// The version an event appended to `stream` gets: current + 1. Throws an error_exception with
// errc::conflict when the caller expected another current version.
std::uint64_t next_stream_version(std::string_view stream, std::uint64_t current,
                                  std::optional<std::uint64_t> expected);

// Expired command outcomes are purged once every this many recorded outcomes.
inline constexpr std::uint64_t outcome_purge_every = 1024;

// The snapshot table of event-sourced aggregates (cleave::event_sourced), alike in every
// backend's own migrations.
inline constexpr std::string_view snapshots_schema =
    "create table cleave_snapshots(stream text primary key, version bigint not null, state text "
    "not null)";
// Then: the shape of the aggregate's state a snapshot holds (event_sourced::snapshot_version);
// snapshots from before it have shape 0.
inline constexpr std::string_view snapshot_shapes_schema =
    "alter table cleave_snapshots add column shape bigint not null default 0";

// NULL for an empty string, else its text.
inline sql_value text_or_null(const std::string& s) {
  return s.empty() ? sql_value{} : sql_value{std::string_view(s)};
}

// The parameters $1…$6 of an event row's insert — stream, stream_version, type, payload,
// command_id, correlation_id — then the backend's own `extra`. The strings must outlive them.
template <class... Extra>
std::array<sql_value, 6 + sizeof...(Extra)> event_row_params(
    const pending_event& e, std::int64_t version, std::string_view payload,
    const std::string& command_id, const std::string& correlation_id, Extra... extra) {
  return {sql_value{std::string_view(e.stream)},
          sql_value{version},
          sql_value{std::string_view(e.type)},
          sql_value{payload},
          text_or_null(command_id),
          text_or_null(correlation_id),
          sql_value{extra}...};
}

}  // namespace cleave::detail
