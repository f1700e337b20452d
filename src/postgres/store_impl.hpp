#pragma once
// What the PostgreSQL store's parts share: the definition of store::impl (the pool of sessions,
// each a connection lent out as a write or a read-only transaction; the read replicas and their
// monitor; the thread that sends NOTIFYs) and the parsing of the server's numbers and LSNs.
// Internal to src/postgres.

#include <cleave/postgres/store.hpp>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "connection.hpp"

namespace cleave::postgres::detail {

inline std::uint64_t parse_u64(std::string_view text) {
  std::uint64_t v = 0;
  std::from_chars(text.data(), text.data() + text.size(), v);
  return v;
}

// "16/B374D848" -> 0x16B374D848
inline std::uint64_t parse_lsn(std::string_view text) {
  const auto slash = text.find('/');
  if (slash == std::string_view::npos) return 0;
  std::uint64_t hi = 0, lo = 0;
  std::from_chars(text.data(), text.data() + slash, hi, 16);
  std::from_chars(text.data() + slash + 1, text.data() + text.size(), lo, 16);
  return (hi << 32) | lo;
}

}  // namespace cleave::postgres::detail

namespace cleave::postgres {

// `deadline` and a little more, for the server's own timeouts to come first; max() stays max().
clock::time_point grace_after(clock::time_point deadline);

struct store::impl {
  // One pooled connection, lent out as a write or a read-only transaction (session.cpp).
  struct session final : write_transaction, read_transaction {
    impl* owner = nullptr;
    std::unique_ptr<detail::connection> conn;
    // Copied from the request, which need not outlive the transaction.
    std::string command_id, correlation_id;
    std::uint64_t transaction_id = 0;  // known once an appended event's insert is answered
    std::uint64_t last_position = 0;
    bool appended = false;  // an event's insert was queued or sent in this transaction
    // Events appended but not queued yet (send_appends), each with the stream version its insert
    // checks (the version before it, when the caller was told one), and what this transaction
    // knows of its streams' versions: nullopt while an insert whose version the database
    // computes is pending.
    struct unsent_event {
      std::string stream, type, payload, command_id, correlation_id;
      std::optional<std::int64_t> check;
    };
    std::vector<unsent_event> unsent;
    std::vector<std::pair<std::string, std::optional<std::uint64_t>>> stream_versions;
    std::vector<std::uint64_t> inserts;  // tickets of queued inserts not yet read back
    // The inserts read back, as (ticket, position), in ticket order (position_before).
    std::vector<std::pair<std::uint64_t, std::uint64_t>> insert_positions;
    std::uint64_t begin_ticket = 0;  // BEGIN's, queued with the first statement
    // The savepoints taken, in order: each one's name, its statement's ticket, and whether
    // events had been appended before it (rolling back to it keeps those, and drops the rest).
    struct savepoint_mark {
      std::string name;
      std::uint64_t ticket = 0;
      bool appended = false;
    };
    std::vector<savepoint_mark> savepoints;
    clock::time_point deadline = clock::time_point::max();  // the request's

    void query(std::string_view sql, std::span<const sql_value> params,
               row_callback on_row) override {
      auto rows = conn->run(sql, params);
      for (int r = 0; r < rows.rows(); ++r) {
        rows.at(r);
        on_row(rows);
      }
    }
    std::int64_t exec(std::string_view sql, std::span<const sql_value> params) override;
    // Queued in the connection's pipeline: sent with the next statements in one round trip.
    deferred defer(std::string_view sql, std::span<const sql_value> params) override;
    // Reads back the positions of the inserts queued before ticket `before` (all of them by
    // default: sync()s first when one is still queued).
    void read_inserts(std::uint64_t before = UINT64_MAX);
    // What a savepoint, its release or a rollback to it does to held appends (session.cpp).
    void before_savepoint_statement(std::string_view sql);
    std::int64_t deferred_rows(std::uint64_t ticket) override { return conn->rows_of(ticket); }
    void script(std::string_view sql) override { conn->script(sql); }

    // Appends are held until something needs them sent (commit, remember, position_so_far),
    // then sent with the streams locked in one order: see send_appends.
    std::uint64_t append(const pending_event& e) override;
    void send_appends();

    std::optional<remembered_outcome> remembered() override;
    void remember(const remembered_outcome& outcome) override;
    void rebind(const request_meta& meta) override;
    position_token position_so_far() override {
      send_appends();
      conn->sync();
      read_inserts();
      return position_token(transaction_id, last_position);
    }
    bool holds_statements() const override { return true; }
    std::uint64_t statement_mark() override {
      send_appends();
      return conn->next_ticket();
    }
    std::optional<std::uint64_t> failed_statement() override { return conn->failed_ticket(); }
    position_token position_before(std::uint64_t mark) override;

    position_token commit() override;
    void rollback() noexcept override;
    void finish() noexcept override { rollback(); }
  };

  // The pool (store.cpp). acquire() begins a transaction with `begin` on a free connection,
  // waiting for one until the pool timeout or the request's deadline; a request with a deadline
  // gets statement and lock timeouts of the time left, and its statements a guard against a
  // server that stops answering.
  explicit impl(const options& o);
  // `own_work`: the process's own (a probe, health), which may take the last connection.
  enum class purpose { read, write };
  session& acquire(const request_meta& meta, std::string_view begin, purpose p, bool own_work);
  void give_back(session* s) noexcept;
  // Whether transaction `xid`, whose COMMIT went unanswered, committed: asked on connections of
  // its own until `deadline` (at least a few seconds). Returns when it did; throws
  // errc::unavailable when it did not, errc::outcome_unknown when that could not be learned.
  void resolve_commit(std::uint64_t xid, clock::time_point deadline);

  // Runs `body` on a connection in a read-only transaction that is always ended, answered within
  // `bound` (errc::timeout otherwise).
  template <class F>
  auto read(F&& body, std::optional<std::chrono::milliseconds> bound = std::nullopt) {
    request_meta meta;
    if (bound) meta.deadline = clock::now() + *bound;
    auto& s =
        acquire(meta, "begin transaction isolation level read committed read only", purpose::read,
                /*own_work=*/true);
    const read_scope ending(static_cast<read_transaction&>(s));
    return body(*s.conn);
  }

  // ---- read replicas (replicas.cpp) ----
  struct replica {
    std::unique_ptr<impl> pool;  // its own connections
    std::string url;
    std::atomic<std::uint64_t> replay_lsn{0}, lag_bytes{0}, reads{0};
    std::atomic<std::int64_t> lag_us{0};
    std::atomic<bool> up{true};  // false from a failure until a probe answers
    clock::time_point probed{};  // the monitor's last probe of it while down
  };
  // Set on a replica's own pool: the flag its connections' failures clear.
  std::atomic<bool>* replica_up = nullptr;
  std::vector<std::unique_ptr<replica>> replicas;
  std::atomic<std::size_t> next_replica{0};
  std::thread monitor;
  std::mutex monitor_mutex;
  std::condition_variable monitor_wake;
  bool monitor_stopping = false;

  static std::uint64_t replay_lsn_of(impl& pool);
  void start_replicas();
  void stop_replicas();
  // The replica to serve a read as fresh as `wanted` (by meta's deadline), or null for the
  // primary.
  replica* route(const request_meta& meta, const consistency& wanted);

  // Wake-ups for other processes (notify.cpp): one NOTIFY after any number of commits (or of a
  // projector's batches), sent by a thread of its own on a connection of its own, outside every
  // transaction (a NOTIFY inside one would take a cluster-wide lock at its commit and serialize
  // writers).
  void announce_commit();
  void announce_progress();
  void announce(bool& pending);
  void send_notifications();
  ~impl();

  options opts;
  std::mutex notify_mutex;
  std::condition_variable notify_wake;
  bool notify_pending = false, progress_pending = false, notify_stopping = false;
  std::thread notifier;
  std::mutex mutex;
  std::condition_variable available;
  std::vector<std::unique_ptr<session>> all;
  std::vector<session*> free;
  std::atomic<std::uint64_t> outcomes_recorded{0};
};

}  // namespace cleave::postgres
