#pragma once
// The server backend: PostgreSQL through libpq, with prepared statements and a connection pool.
//
//   cleave::postgres::store db({.url = "postgresql://app@127.0.0.1/shop"});

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include <cleave/store/store.hpp>

namespace cleave::postgres {

struct options {
  std::string url;            // a libpq connection string or URI
  std::size_t pool_size = 8;  // connections shared by writes and reads
  // How long begin_write/begin_read wait for a free connection before errc::unavailable (or
  // until the request's deadline, errc::timeout, when that comes first).
  std::chrono::milliseconds pool_timeout{1000};
  // How long the outcome of a command with an id is kept for its retries.
  std::chrono::seconds outcome_retention = std::chrono::hours(24 * 7);
  // Hot standbys (postgresql:// URLs) that serve read-only transactions. `eventual` reads go to
  // a standby less than replica_max_lag behind; `bounded(t)` to one less than t behind;
  // `at_least(token)` to one that has replayed the token's commit LSN, waiting up to replica_wait
  // for one (then the primary, or errc::unavailable when replica_fallback_to_primary is false);
  // `strong` always to the primary.
  std::vector<std::string> replicas{};
  std::chrono::milliseconds replica_max_lag{5000};
  std::chrono::milliseconds replica_wait{1000};
  bool replica_fallback_to_primary = true;
  // How long a statement on a standby may go unanswered before the standby is set aside
  // (errc::timeout for that read) and probed in the background until it answers again.
  std::chrono::milliseconds replica_timeout{1000};
};

// A PostgreSQL database as a cleave store. Write transactions run concurrently, SERIALIZABLE
// unless begun at isolation::read_committed; a serialization failure or deadlock throws a
// cleave::transient_error (retried by the command bus). A transaction begun for a request with a
// deadline runs under `statement_timeout` and `lock_timeout` of the time left (errc::timeout when
// it runs out). A commit whose answer is lost is resolved by asking the server, on another
// connection, whether its transaction committed (errc::outcome_unknown when that cannot be
// learned before the deadline). The event log is
// read gap-safely by (transaction id, position) below the oldest running transaction. Position
// tokens carry the writer's xid8, the position and the commit LSN. Applies cleave's own
// migrations when opened. Thread-safe.
class store final : public cleave::store {
 public:
  // Connects and migrates. Throws cleave::error_exception when it cannot.
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
  position_token head_in(read_session& tx) override;  // one statement in `tx`'s snapshot
  position_token readable_head() override;
  std::string_view dialect() const noexcept override { return "postgresql"; }
  std::int64_t exec_over_events(write_session& tx, std::string_view statement, position_token after,
                                position_token through) override;
  std::string_view now_ms_sql() const noexcept override;
  std::string materialized_view_schema(std::string_view table, std::string_view select_sql,
                                       std::string_view key_columns) const override;
  void refresh_materialized_view(write_session& tx, std::string_view table,
                                 std::string_view select_sql) override;
  log_distance distance(position_token after) override;
  std::unique_ptr<commit_watch> watch_commits() override;
  // NOTIFY on a channel of its own (not the commits'), from the thread that sends those.
  void announce_progress() noexcept override;
  std::unique_ptr<commit_watch> watch_progress() override;
  std::unique_ptr<lease> try_lease(std::string_view name) override;
  std::vector<replica_status> replicas() override;

  const options& settings() const noexcept { return options_; }

 private:
  migration_statements migration_sql() const override;
  struct impl;
  options options_;
  std::unique_ptr<impl> impl_;
};

}  // namespace cleave::postgres
