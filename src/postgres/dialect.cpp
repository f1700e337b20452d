// The SQL that is PostgreSQL's own, for the parts above the store: set-based statements over a span
// of the log ({events}), materialized views, and the migrator's table and lock.

#include <string>

#include <fmt/format.h>

#include <cleave/store/detail/sql_text.hpp>

#include "store_impl.hpp"

namespace cleave::postgres {

store::migration_statements store::migration_sql() const {
  return {.lock = "select pg_advisory_xact_lock(7297306275)",
          .time_type = "timestamptz",
          .now = "now()",
          .table_exists =
              "select count(*) from (select to_regclass('cleave_migrations') as t) "
              "as found where t is not null"};
}

std::string_view store::now_ms_sql() const noexcept {
  return "(extract(epoch from clock_timestamp()) * 1000)::bigint";
}

namespace {
// {events}.recorded_at_ms: Unix milliseconds, rounded as the log's readers round them.
constexpr std::string_view recorded_at_ms_sql =
    "round(extract(epoch from recorded_at) * 1000)::bigint";
}  // namespace

std::int64_t store::exec_over_events(write_session& tx, std::string_view statement,
                                     position_token after, position_token through) {
  const auto run = [&](std::string_view rows, std::span<const sql_value> params) {
    const std::string sql = cleave::detail::replace_all(
        statement, "{events}",
        fmt::format("(select *, {} as recorded_at_ms from cleave_events where {}) as events",
                    recorded_at_ms_sql, rows));
    return tx.exec(sql, params);
  };
  // Spelled out rather than as row comparisons ((transaction_id, position) > (…)): PostgreSQL
  // estimates those at one row (a sort-based aggregate that spills to disk) and does not end the
  // index scan at the upper one. A bulk load is one transaction: the first form.
  // Planned for these bounds, not generically (until this transaction ends): a prepared
  // statement's generic plan assumes a small range, an index scan, where a long catch-up is
  // best served by a sequential scan.
  tx.exec("select set_config('plan_cache_mode', 'force_custom_plan', true)", {});
  const std::string from_tx = std::to_string(after.transaction()),
                    to_tx = std::to_string(through.transaction());
  const auto from_pos = static_cast<std::int64_t>(after.position()),
             to_pos = static_cast<std::int64_t>(through.position());
  if (after.transaction() == through.transaction()) {
    const sql_value params[] = {std::string_view(from_tx), from_pos, to_pos};
    return run("transaction_id = $1::text::xid8 and position > $2 and position <= $3", params);
  }
  const sql_value params[] = {std::string_view(from_tx), from_pos, std::string_view(to_tx), to_pos};
  return run(
      "(transaction_id = $1::text::xid8 and position > $2) or (transaction_id > $1::text::xid8 "
      "and transaction_id < $3::text::xid8) or (transaction_id = $3::text::xid8 and position <= "
      "$4)",
      params);
}

std::string store::materialized_view_schema(std::string_view table, std::string_view select_sql,
                                            std::string_view key_columns) const {
  // The unique index lets a refresh run concurrently with readers.
  return fmt::format("create materialized view {0} as {1}; create unique index {0}_key on {0}({2})",
                     table, select_sql, key_columns);
}

void store::refresh_materialized_view(write_session& tx, std::string_view table, std::string_view) {
  tx.exec(fmt::format("refresh materialized view concurrently {}", table), {});
}

}  // namespace cleave::postgres
