#pragma once
// What the projector's parts share: the schema of its tables (checkpoints, dead letters,
// rebuilds), their row shapes, token conversions, and the transaction helpers every part uses.
// Internal to src/read.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <cleave/core/context.hpp>
#include <cleave/core/detail/bus_core.hpp>
#include <cleave/core/detail/schedules.hpp>
#include <cleave/read/projector.hpp>
#include <cleave/store/detail/scopes.hpp>
#include <cleave/store/store.hpp>

namespace cleave::read_detail {

inline constexpr migration checkpoint_schema[] = {
    {1, "checkpoints",
     "create table cleave_checkpoints(name text primary key, transaction_id bigint not null,"
     "  position bigint not null)"},
    {2, "dead letters",
     "create table cleave_dead_letters(projection text not null, transaction_id bigint not null,"
     "  position bigint not null, type text not null, payload text not null, error text not null,"
     "  primary key (projection, transaction_id, position))"},
    {3, "rebuilds",
     "create table cleave_rebuilds(name text primary key, shadow text not null,"
     "  transaction_id bigint not null, position bigint not null)"},
    // What built each view (projection::version_key) and what a rebuild builds; null for a view
    // made before versions were recorded (taken as the current version).
    {4, "versions",
     "alter table cleave_checkpoints add column version text;"
     "alter table cleave_rebuilds add column version text"},
    // Tables of versions swapped out, dropped once their grace period has passed.
    {5, "retired views",
     "create table cleave_retired_views(name text primary key, projection text not null,"
     "  drop_after_ms bigint not null)"},
    // Units shared among projector processes: who holds each unit's lease, until when (the
    // database's clock, Unix ms) and under which epoch (raised by each claim; a batch commits
    // only under the epoch it read). The nodes table counts the live processes of each group.
    {6, "unit leases",
     "alter table cleave_checkpoints add column owner text;"
     "alter table cleave_checkpoints add column epoch bigint not null default 0;"
     "alter table cleave_checkpoints add column lease_until_ms bigint not null default 0;"
     "create table cleave_projector_nodes(node text not null, grp text not null,"
     "  seen_ms bigint not null, primary key (node, grp))"},
};

struct parked_row {
  std::int64_t transaction_id = 0;
  std::int64_t position = 0;
  std::string type;
  std::string payload;
  std::string error;
};
CLEAVE_RECORD(parked_row, transaction_id, position, type, payload, error)

struct rebuild_row {
  std::string shadow;
  std::int64_t transaction_id = 0;
  std::int64_t position = 0;
  std::string version;  // what it builds; empty for a rebuild begun before versions
};
CLEAVE_RECORD(rebuild_row, shadow, transaction_id, position, version)

// The columns of a rebuild_row.
inline constexpr std::string_view rebuild_columns =
    "shadow, transaction_id, position, coalesce(version, '') as version";

struct token_row {
  std::int64_t transaction_id = 0;
  std::int64_t position = 0;
};
CLEAVE_RECORD(token_row, transaction_id, position)

// A unit's checkpoint row: where it stands, under which lease epoch, and who holds it.
struct unit_row {
  std::string name;
  std::int64_t transaction_id = 0;
  std::int64_t position = 0;
  std::int64_t epoch = 0;
  std::string owner;  // empty when no one holds it
  std::string version;
};
CLEAVE_RECORD(unit_row, name, transaction_id, position, epoch, owner, version)

// The rows of cleave_checkpoints that belong to projection `name`: its own and its units'
// (`<name>#<i>/<n>`, of any n), as `unit_row`s; the statement's parameters are
// unit_rows_args(name).
inline constexpr std::string_view unit_row_select =
    "select name, transaction_id, position, epoch, coalesce(owner, '') as owner, "
    "coalesce(version, '') as version from cleave_checkpoints";
inline constexpr std::string_view unit_rows_where =
    "where name = $1 or substr(name, 1, cast($3 as integer)) = $2";
// Rows of a table keyed by projection name (dead letters) that belong to projection `name` or
// one of its units: `where` + of_projection_sql("projection"), with unit_rows_args(name) first.
inline std::string of_projection_sql(std::string_view column) {
  return std::string(column) + " = $1 or substr(" + std::string(column) +
         ", 1, cast($3 as integer)) = $2";
}
inline std::tuple<std::string, std::string, std::int64_t> unit_rows_args(std::string_view name) {
  std::string prefix = std::string(name) + "#";
  const auto length = static_cast<std::int64_t>(prefix.size());
  return {std::string(name), std::move(prefix), length};
}

// The version recorded beside the checkpoint of projection `name`'s view (projection::
// version_key); empty when there is none.
inline std::string recorded_version(const read_context& ctx, std::string_view name) {
  return ctx
      .one<std::string>("select coalesce(version, '') from cleave_checkpoints where name = $1",
                        name)
      .value_or("");
}

inline position_token token_of(std::int64_t transaction, std::int64_t position) {
  return position_token(static_cast<std::uint64_t>(transaction),
                        static_cast<std::uint64_t>(position));
}
inline std::int64_t tx_of(position_token t) {
  return static_cast<std::int64_t>(t.transaction());
}
inline std::int64_t pos_of(position_token t) {
  return static_cast<std::int64_t>(t.position());
}

// The least of the units' checkpoints: every event up to it is in the view (empty for none).
inline position_token least_checkpoint(const std::vector<unit_row>& units) {
  std::optional<position_token> least;
  for (const auto& r : units) {
    const auto at = token_of(r.transaction_id, r.position);
    if (!least || at < *least) least = at;
  }
  return least.value_or(position_token{});
}

inline std::int64_t unix_ms() {
  return cleave::detail::unix_now_ms();
}

using cleave::detail::reading;
using cleave::detail::writing;

// Whether `token` lies within the log whose head is `head`: not past it in log order, and (on
// PostgreSQL) not past the WAL position read with it.
inline bool token_within(position_token token, position_token head) {
  return !(head < token) && token.lsn() <= head.lsn();
}

// Lag in events and seconds behind the log, from a status's checkpoint.
inline void fill_lag(store& log, projection_status& out) {
  const auto behind = log.distance(out.checkpoint);
  out.lag_events = behind.events;
  if (behind.events > 0)
    out.lag_seconds =
        static_cast<double>(std::max<std::int64_t>(0, unix_ms() - behind.oldest_recorded_at_ms)) /
        1000.0;
}

}  // namespace cleave::read_detail
