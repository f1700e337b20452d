// The SQL that is SQLite's own, for the parts above the store: set-based statements over a span of
// the log ({events}), materialized views as tables filled again, and the migrator's table.

#include <string>

#include <fmt/format.h>

#include <cleave/store/detail/sql_text.hpp>

#include "store_impl.hpp"

namespace cleave::sqlite {

store::migration_statements store::migration_sql() const {
  // The single writer's transaction (begin immediate) already excludes every other writer.
  return {.lock = "",
          .time_type = "integer",
          .now = "cast((julianday('now') - 2440587.5) * 86400000 as integer)",
          .table_exists =
              "select count(*) from sqlite_master where type = 'table' and name = "
              "'cleave_migrations'"};
}

std::string_view store::now_ms_sql() const noexcept {
  return "cast((julianday('now') - 2440587.5) * 86400000 as integer)";
}

std::int64_t store::exec_over_events(write_session& tx, std::string_view statement,
                                     position_token after, position_token through) {
  const std::string sql = cleave::detail::replace_all(
      statement, "{events}",
      "(select *, recorded_at as recorded_at_ms from cleave_events where position > $1 and "
      "position <= $2) as events");
  const sql_value params[] = {static_cast<std::int64_t>(after.position()),
                              static_cast<std::int64_t>(through.position())};
  return tx.exec(sql, params);
}

std::string store::materialized_view_schema(std::string_view table, std::string_view select_sql,
                                            std::string_view key_columns) const {
  // No materialized views in SQLite: a table that each refresh fills again.
  return fmt::format("create table {0} as {1}; create unique index {0}_key on {0}({2})", table,
                     select_sql, key_columns);
}

void store::refresh_materialized_view(write_session& tx, std::string_view table,
                                      std::string_view select_sql) {
  tx.exec(fmt::format("delete from {}", table), {});
  tx.exec(fmt::format("insert into {} {}", table, select_sql), {});
}

}  // namespace cleave::sqlite
