#pragma once
// The embedded default backend: one SQLite file in WAL mode (sqlite3 C API).
//
//   cleave::sqlite::store db({.path = "var/shop.db"});
//   cleave::command_bus commands{&db};
//   cleave::query_bus queries{&db};

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include <cleave/store/store.hpp>

namespace cleave::sqlite {

// How hard a commit works to survive a power loss (PRAGMA synchronous). `full` (the default)
// syncs the WAL on every commit; `normal` may lose the last commits on power loss (never on a
// process crash) and is an order of magnitude faster.
enum class durability { full, normal };

struct options {
  std::string path;  // a file (created when missing, with its folder), or ":memory:"
  durability sync = durability::full;
  // How long a write waits for another process's write transaction before giving up.
  std::chrono::milliseconds busy_timeout{5000};
  // How long the outcome of a command with an id is kept for its retries.
  std::chrono::seconds outcome_retention = std::chrono::hours(24 * 7);
};

// A SQLite database as a cleave store. One writer at a time (SQLite's rule; a second writer,
// also in another process, waits its turn), any number of concurrent read-only readers, each
// with PRAGMA query_only. Applies cleave's own migrations when opened. Thread-safe.
class store final : public cleave::store {
 public:
  // Opens or creates the database. Throws cleave::error_exception when it cannot.
  explicit store(options opts);
  ~store() override;
  store(const store&) = delete;
  store& operator=(const store&) = delete;

  using session_source::begin_write;
  write_transaction& begin_write(const request_meta& meta, isolation level) override;
  using session_source::begin_read;
  read_transaction& begin_read(const request_meta& meta, const consistency& wanted) override;
  position_token read_events_into(position_token after, std::size_t limit,
                                  std::vector<stored_event>& out,
                                  std::span<const std::string> types,
                                  event_fields fields = event_fields::all) override;
  log_span read_span(position_token after, std::size_t limit, position_token until) override;
  position_token head() override;
  position_token head_in(read_session& tx) override;  // one statement in `tx`
  position_token readable_head() override;
  std::string_view dialect() const noexcept override { return "sqlite"; }
  std::int64_t exec_over_events(write_session& tx, std::string_view statement, position_token after,
                                position_token through) override;
  std::string_view now_ms_sql() const noexcept override;
  std::string materialized_view_schema(std::string_view table, std::string_view select_sql,
                                       std::string_view key_columns) const override;
  void refresh_materialized_view(write_session& tx, std::string_view table,
                                 std::string_view select_sql) override;
  log_distance distance(position_token after) override;
  std::unique_ptr<commit_watch> watch_commits() override;
  std::unique_ptr<lease> try_lease(std::string_view name) override;
  std::size_t concurrent_writers() const noexcept override { return 1; }
  bool local_reads() const noexcept override;  // a file, not ":memory:" (one shared connection)
  std::optional<data_version> current_data_version() const noexcept override;  // WAL mode only

  const options& settings() const noexcept { return options_; }

 private:
  migration_statements migration_sql() const override;
  struct impl;
  options options_;
  std::unique_ptr<impl> impl_;
};

}  // namespace cleave::sqlite
