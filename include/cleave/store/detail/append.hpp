#pragma once
// What both backends do alike when appending an event.

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

// NULL for an empty string, else its text.
inline sql_value text_or_null(const std::string& s) {
  return s.empty() ? sql_value{} : sql_value{std::string_view(s)};
}

}  // namespace cleave::detail
