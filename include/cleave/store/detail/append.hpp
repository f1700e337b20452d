#pragma once
// What both backends do alike when appending an event and remembering outcomes.

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

// NULL for an empty string, else its text.
inline sql_value text_or_null(const std::string& s) {
  return s.empty() ? sql_value{} : sql_value{std::string_view(s)};
}

}  // namespace cleave::detail
