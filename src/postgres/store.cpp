#include <cleave/postgres/store.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cleave/store/detail/append.hpp>
#include <cleave/store/detail/sql_text.hpp>

#include "connection.hpp"

namespace cleave::postgres {

namespace {

using cleave::detail::next_stream_version;
using cleave::detail::stream_version_sql;
using cleave::detail::text_or_null;
using detail::connection;
using detail::result_set;

constexpr migration own_migrations[] = {
    {1, "event log",
     "create table cleave_events("
     "  position bigint generated always as identity primary key,"
     "  transaction_id xid8 not null default pg_current_xact_id(),"
     "  stream text not null,"
     "  stream_version bigint not null,"
     "  type text not null,"
     "  payload jsonb not null,"
     "  command_id text,"
     "  correlation_id text,"
     "  recorded_at timestamptz not null default now());"
     "create unique index cleave_events_stream on cleave_events(stream, stream_version)"
     "  where stream <> '';"
     "create index cleave_events_order on cleave_events(transaction_id, position);"},
    {2, "command outcomes",
     "create table cleave_commands("
     "  command_id text primary key,"
     "  command_type text not null,"
     "  outcome jsonb not null,"
     "  transaction_id xid8 not null,"
     "  position bigint not null,"
     "  lsn pg_lsn,"
     "  recorded_at timestamptz not null default now());"
     "create index cleave_commands_age on cleave_commands(recorded_at);"},
    {3, "snapshots",
     "create table cleave_snapshots("
     "  stream text primary key,"
     "  version bigint not null,"
     "  state text not null);"},
};

// A binary timestamptz (microseconds since 2000-01-01 UTC) as Unix milliseconds, rounded half away
// from zero as `(extract(epoch from t) * 1000)::bigint` does.
std::int64_t unix_ms_of(std::int64_t pg_micros) {
  constexpr std::int64_t unix_micros_at_2000 = 946'684'800'000'000;
  const std::int64_t us = pg_micros + unix_micros_at_2000;
  return us >= 0 ? (us + 500) / 1000 : -((-us + 500) / 1000);
}

// Gap-safe: only transactions older than every running one, in (transaction, position) order.
// Read with binary results: the ids, numbers and time travel as 8 bytes, without the server's text
// conversions (text columns are the same bytes either way).
constexpr std::string_view select_events =
    "select transaction_id, position, stream, stream_version, type, payload::text, "
    "command_id, correlation_id, recorded_at "
    "from cleave_events "
    "where (transaction_id, position) > ($1::text::xid8, $2) "
    "  and transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
    // Qualified: the output column `transaction_id` is text, and would sort as text.
    "order by cleave_events.transaction_id, cleave_events.position limit $3";
// The same, of some types ($6, a JSON array) and up to a position ($4, $5): a gap-safe end found
// first, so the bound holds whatever commits meanwhile.
constexpr std::string_view select_events_of =
    "select transaction_id, position, stream, stream_version, type, payload::text, "
    "command_id, correlation_id, recorded_at "
    "from cleave_events "
    "where (transaction_id, position) > ($1::text::xid8, $2) "
    "  and (transaction_id, position) <= ($4::text::xid8, $5) "
    "  and type = any(array(select jsonb_array_elements_text($6::jsonb))) "
    "order by cleave_events.transaction_id, cleave_events.position limit $3";

constexpr std::uint64_t purge_every = 1024;

// The event types a read is limited to, as the JSON array select_events_of takes apart.
std::string json_array_of(std::span<const std::string> types) {
  json out = json::array();
  for (const auto& type : types) out.push_back(type);
  return out.dump();
}

std::uint64_t parse_u64(std::string_view text) {
  std::uint64_t v = 0;
  std::from_chars(text.data(), text.data() + text.size(), v);
  return v;
}

// "16/B374D848" -> 0x16B374D848
std::uint64_t parse_lsn(std::string_view text) {
  const auto slash = text.find('/');
  if (slash == std::string_view::npos) return 0;
  std::uint64_t hi = 0, lo = 0;
  std::from_chars(text.data(), text.data() + slash, hi, 16);
  std::from_chars(text.data() + slash + 1, text.data() + text.size(), lo, 16);
  return (hi << 32) | lo;
}

std::string retention_interval(std::chrono::seconds s) {
  return fmt::format("{} seconds", s.count());
}

constexpr std::string_view commit_channel = "cleave_commits";
// Apart from commits, so that a projector's own batches do not wake projectors.
constexpr std::string_view progress_channel = "cleave_progress";

// LISTENs to `channel` on a connection of its own; woken by the NOTIFY each process sends after
// its commits or batches (coalesced), or by interrupt() through an eventfd.
class notify_watch final : public commit_watch {
 public:
  notify_watch(const std::string& url, std::string_view channel)
      : conn_(url), interrupt_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    conn_.script(fmt::format("listen {}", channel));
  }
  ~notify_watch() override { ::close(interrupt_fd_); }

  void wait_until(clock::time_point deadline) override {
    PGconn* pg = conn_.handle();
    for (;;) {
      if (drain()) return;
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count();
      if (left <= 0) return;
      pollfd fds[] = {{PQsocket(pg), POLLIN, 0}, {interrupt_fd_, POLLIN, 0}};
      const int timeout = static_cast<int>(std::min<long long>(left, 60'000));
      if (::poll(fds, 2, timeout) < 0 && errno != EINTR) return;
      if (fds[1].revents & POLLIN) {
        std::uint64_t n;
        (void)!::read(interrupt_fd_, &n, sizeof n);
        return;
      }
      if (fds[0].revents & (POLLERR | POLLHUP)) {
        // The connection is gone: say "maybe" and let the caller's poll cover the gap.
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        return;
      }
      if (fds[0].revents & POLLIN) PQconsumeInput(pg);
    }
  }
  void interrupt() override {
    const std::uint64_t one = 1;
    (void)!::write(interrupt_fd_, &one, sizeof one);
  }

 private:
  // True when a notification had arrived.
  bool drain() {
    bool any = false;
    while (PGnotify* n = PQnotifies(conn_.handle())) {
      any = true;
      PQfreemem(n);
    }
    return any;
  }

  connection conn_;
  int interrupt_fd_;
};

// A session-level advisory lock, held by a connection of its own: PostgreSQL drops it when that
// connection ends, also when the process holding it is killed.
class advisory_lease final : public lease {
 public:
  explicit advisory_lease(std::unique_ptr<connection> conn) : conn_(std::move(conn)) {}
  bool held() override {
    try {
      conn_->script("select 1");
      return true;
    } catch (const error_exception&) {
      return false;
    }
  }

 private:
  std::unique_ptr<connection> conn_;
};

}  // namespace

struct store::impl {
  // One pooled connection, lent out as a write or a read-only transaction.
  struct session final : write_transaction, read_transaction {
    impl* owner = nullptr;
    std::unique_ptr<connection> conn;
    // Copied from the request, which need not outlive the transaction.
    std::string command_id, correlation_id;
    std::uint64_t transaction_id = 0;  // set by the first append
    std::uint64_t last_position = 0;

    void query(std::string_view sql, std::span<const sql_value> params,
               row_callback on_row) override {
      auto rows = conn->run(sql, params);
      for (int r = 0; r < rows.rows(); ++r) {
        rows.at(r);
        on_row(rows);
      }
    }
    std::int64_t exec(std::string_view sql, std::span<const sql_value> params) override {
      return conn->run(sql, params).affected();
    }
    void script(std::string_view sql) override { conn->script(sql); }

    std::uint64_t append(const pending_event& e) override {
      std::int64_t version = 0;
      if (!e.stream.empty()) {
        const sql_value stream[] = {e.stream};
        const auto current =
            static_cast<std::uint64_t>(conn->run(stream_version_sql, stream).integer(0, 0));
        version =
            static_cast<std::int64_t>(next_stream_version(e.stream, current, e.expected_version));
      }
      const std::string payload = e.payload.dump();
      const sql_value params[] = {e.stream,
                                  version,
                                  e.type,
                                  std::string_view(payload),
                                  text_or_null(command_id),
                                  text_or_null(correlation_id)};
      auto r = conn->run(
          "insert into cleave_events(stream, stream_version, type, payload, command_id, "
          "correlation_id) values ($1, $2, $3, $4::jsonb, $5, $6) "
          "returning position, transaction_id::text",
          params);
      last_position = static_cast<std::uint64_t>(r.integer(0, 0));
      transaction_id = parse_u64(r.text(0, 1));
      return static_cast<std::uint64_t>(version);
    }

    std::optional<remembered_outcome> remembered() override {
      const auto keep = retention_interval(owner->opts.outcome_retention);
      const sql_value key[] = {std::string_view(command_id), std::string_view(keep)};
      auto r = conn->run(
          // The commit's LSN is not known inside its transaction; the primary's WAL position now
          // is past it, so a standby that has replayed that much has the command's effects.
          "select command_type, outcome::text, transaction_id::text, position, "
          "coalesce(lsn, pg_current_wal_lsn())::text "
          "from cleave_commands where command_id = $1 and recorded_at >= now() - $2::interval",
          key);
      if (r.rows() == 0) return std::nullopt;
      auto stored = parse_json(r.text(0, 1));
      auto prior = stored ? outcome_from_json(*stored) : std::unexpected(stored.error());
      if (!prior) throw error_exception(prior.error());
      prior->command_type = r.text(0, 0);
      prior->position =
          position_token(parse_u64(r.text(0, 2)), static_cast<std::uint64_t>(r.integer(0, 3)),
                         r.is_null(0, 4) ? 0 : parse_lsn(r.text(0, 4)));
      return std::move(*prior);
    }
    void remember(const remembered_outcome& outcome) override {
      const std::string text = outcome_to_json(outcome).dump();
      const auto keep = retention_interval(owner->opts.outcome_retention);
      const std::string xid = std::to_string(transaction_id);  // 0 when nothing was appended
      const sql_value row[] = {std::string_view(command_id),
                               std::string_view(outcome.command_type),
                               std::string_view(text),
                               std::string_view(xid),
                               static_cast<std::int64_t>(last_position),
                               std::string_view(keep)};
      // A live record for the id means a racing retry won: no row changes, and this transaction
      // is a conflict. An expired one not yet purged gives way.
      auto r = conn->run(
          "insert into cleave_commands(command_id, command_type, outcome, transaction_id, "
          "position) "
          "values ($1, $2, $3::jsonb, $4::text::xid8, $5) "
          "on conflict (command_id) do update set command_type = excluded.command_type, "
          "  outcome = excluded.outcome, transaction_id = excluded.transaction_id, "
          "  position = excluded.position, recorded_at = now() "
          "where cleave_commands.recorded_at < now() - $6::interval",
          row);
      if (r.affected() == 0)
        throw error_exception(
            {errc::conflict,
             fmt::format("command id '{}' was recorded by a concurrent retry", command_id),
             {}});
      if (owner->outcomes_recorded.fetch_add(1) % purge_every == purge_every - 1) {
        const sql_value older[] = {std::string_view(keep)};
        conn->run("delete from cleave_commands where recorded_at < now() - $1::interval", older);
      }
    }
    void rebind(const request_meta& meta) override {
      command_id.assign(meta.command_id);
      correlation_id.assign(meta.correlation_id);
      conn->set_correlation_id(meta.correlation_id);
    }
    position_token position_so_far() override {
      return position_token(transaction_id, last_position);
    }

    position_token commit() override {
      std::uint64_t lsn = 0;
      try {
        auto r = conn->script("commit; select pg_current_wal_lsn()::text");
        lsn = parse_lsn(r.text(0, 0));
      } catch (...) {
        rollback();
        throw;
      }
      const position_token token(transaction_id, last_position, lsn);
      const bool appended = transaction_id != 0;
      owner->give_back(this);
      if (appended) owner->announce_commit();
      return token;
    }
    void rollback() noexcept override {
      try {
        conn->script("rollback");
      } catch (...) {
        // A broken connection is replaced when given back.
      }
      owner->give_back(this);
    }
    void finish() noexcept override { rollback(); }
  };

  explicit impl(const options& o) : opts(o) {
    // Connect one up front, so a wrong URL fails here and not at the first command.
    auto first = std::make_unique<session>();
    first->owner = this;
    first->conn = std::make_unique<connection>(opts.url);
    free.push_back(first.get());
    all.push_back(std::move(first));
  }

  session& acquire(const request_meta& meta, std::string_view begin) {
    session* s = nullptr;
    {
      std::unique_lock lock(mutex);
      if (free.empty() && all.size() < opts.pool_size) {
        auto fresh = std::make_unique<session>();
        fresh->owner = this;
        free.push_back(fresh.get());
        all.push_back(std::move(fresh));
      }
      if (!available.wait_for(lock, opts.pool_timeout, [&] { return !free.empty(); }))
        throw error_exception({errc::unavailable,
                               fmt::format("no PostgreSQL connection was free within {} ms",
                                           opts.pool_timeout.count()),
                               {}});
      s = free.back();
      free.pop_back();
    }
    try {
      if (!s->conn || !s->conn->healthy()) s->conn = std::make_unique<connection>(opts.url);
      s->conn->script(begin);
    } catch (...) {
      give_back(s);
      throw;
    }
    s->rebind(meta);
    s->transaction_id = 0;
    s->last_position = 0;
    return *s;
  }

  void give_back(session* s) noexcept {
    if (s->conn && !s->conn->healthy()) s->conn.reset();
    {
      std::lock_guard lock(mutex);
      free.push_back(s);
    }
    available.notify_one();
  }

  // Runs `body` on a connection in a read-only transaction that is always ended.
  template <class F>
  auto read(F&& body) {
    static const request_meta none;
    auto& s = acquire(none, "begin transaction isolation level read committed read only");
    const read_scope ending(static_cast<read_transaction&>(s));
    return body(*s.conn);
  }

  // ---- read replicas ----
  struct replica {
    std::unique_ptr<impl> pool;  // its own connections
    std::string url;
    std::atomic<std::uint64_t> replay_lsn{0}, lag_bytes{0}, reads{0};
    std::atomic<std::int64_t> lag_us{0};
  };
  std::vector<std::unique_ptr<replica>> replicas;
  std::atomic<std::size_t> next_replica{0};
  std::thread monitor;
  std::mutex monitor_mutex;
  std::condition_variable monitor_wake;
  bool monitor_stopping = false;

  static std::uint64_t replay_lsn_of(impl& pool) {
    return pool.read([](connection& conn) {
      auto r = conn.script("select coalesce(pg_last_wal_replay_lsn()::text, '0/0')");
      return parse_lsn(r.text(0, 0));
    });
  }

  void start_replicas() {
    for (const auto& url : opts.replicas) {
      auto r = std::make_unique<replica>();
      options o = opts;
      o.url = url;
      o.replicas.clear();
      r->pool = std::make_unique<impl>(o);
      r->url = url;
      replicas.push_back(std::move(r));
    }
    if (replicas.empty()) return;
    // Lag: the primary's WAL position sampled every 20 ms; a standby is as many seconds behind
    // as the oldest sample it has not replayed.
    monitor = std::thread([this] {
      std::deque<std::pair<clock::time_point, std::uint64_t>> samples;
      std::unique_lock lock(monitor_mutex);
      while (!monitor_stopping) {
        lock.unlock();
        try {
          const auto now = clock::now();
          const auto primary_lsn = read([](connection& conn) {
            return parse_lsn(conn.script("select pg_current_wal_lsn()::text").text(0, 0));
          });
          samples.emplace_back(now, primary_lsn);
          while (samples.size() > 3000) samples.pop_front();  // a minute
          for (auto& r : replicas) {
            std::uint64_t at = 0;
            try {
              at = replay_lsn_of(*r->pool);
            } catch (const error_exception&) {
              r->lag_us = std::numeric_limits<std::int64_t>::max();  // unreachable: set aside
              continue;
            }
            r->replay_lsn = at;
            r->lag_bytes = primary_lsn > at ? primary_lsn - at : 0;
            std::int64_t lag = 0;
            for (const auto& [when, lsn] : samples)
              if (lsn > at) {
                lag = std::chrono::duration_cast<std::chrono::microseconds>(now - when).count();
                break;
              }
            r->lag_us = lag;
          }
        } catch (const error_exception&) {
          // The primary is unreachable: keep the last figures.
        }
        lock.lock();
        monitor_wake.wait_for(lock, std::chrono::milliseconds(20),
                              [&] { return monitor_stopping; });
      }
    });
  }

  void stop_replicas() {
    {
      std::lock_guard lock(monitor_mutex);
      monitor_stopping = true;
    }
    monitor_wake.notify_all();
    if (monitor.joinable()) monitor.join();
  }

  // The replica to serve a read as fresh as `wanted` (by meta's deadline), or null for the
  // primary.
  replica* route(const request_meta& meta, const consistency& wanted) {
    if (replicas.empty()) return nullptr;
    using level = consistency::level;
    if (wanted.required == level::strong) return nullptr;
    const std::size_t n = replicas.size(), first = next_replica++ % n;
    auto pick = [&](auto&& fits) -> replica* {
      for (std::size_t i = 0; i < n; ++i) {
        auto& r = *replicas[(first + i) % n];
        if (fits(r)) return &r;
      }
      return nullptr;
    };
    const auto lag_of = [](const replica& r) { return std::chrono::microseconds(r.lag_us.load()); };
    if (wanted.required == level::eventual)
      return pick([&](const replica& r) { return lag_of(r) <= opts.replica_max_lag; });
    if (wanted.required == level::bounded)
      return pick([&](const replica& r) {
        return lag_of(r) <= std::min(opts.replica_max_lag, wanted.max_staleness);
      });
    // at_least: a standby that has replayed the token's commit LSN. Without an LSN (a token
    // from elsewhere) only the primary is sure to have it.
    const auto lsn = wanted.token.lsn();
    if (wanted.token.empty())
      return pick([&](const replica& r) { return lag_of(r) <= opts.replica_max_lag; });
    if (lsn == 0) return nullptr;
    if (auto* r = pick([&](const replica& c) { return c.replay_lsn.load() >= lsn; })) return r;
    // Before waiting for it: a commit the primary has not written yet was never issued here.
    if (lsn > read([](connection& conn) {
          return parse_lsn(conn.script("select pg_current_wal_lsn()::text").text(0, 0));
        }))
      throw error_exception({errc::validation,
                             "the position token's commit LSN is past the primary's WAL: this "
                             "store has not issued it",
                             {}});
    const auto until = std::min(meta.deadline, clock::now() + opts.replica_wait);
    std::uint64_t closest = 0;
    for (;;) {
      for (std::size_t i = 0; i < n; ++i) {
        auto& r = *replicas[(first + i) % n];
        try {
          const auto at = replay_lsn_of(*r.pool);
          r.replay_lsn = std::max(r.replay_lsn.load(), at);
          if (at >= lsn) return &r;
          closest = std::max(closest, at);
        } catch (const error_exception&) {
          // unreachable: try the others
        }
      }
      if (clock::now() >= until) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (opts.replica_fallback_to_primary) return nullptr;
    throw error_exception(
        {errc::unavailable,
         fmt::format("no replica has replayed the requested commit (LSN {:X}/{:X}) within {} ms; "
                     "the closest is at {:X}/{:X}",
                     lsn >> 32, lsn & 0xffffffff, opts.replica_wait.count(), closest >> 32,
                     closest & 0xffffffff),
         {}});
  }

  // Wake-ups for other processes: one NOTIFY after any number of commits (or of a projector's
  // batches), sent by a thread of its own on a connection of its own, outside every
  // transaction (a NOTIFY inside one would take a cluster-wide lock at its commit and serialize
  // writers).
  void announce_commit() { announce(notify_pending); }
  void announce_progress() { announce(progress_pending); }
  void announce(bool& pending) {
    {
      std::lock_guard lock(notify_mutex);
      if (!notifier.joinable()) notifier = std::thread([this] { send_notifications(); });
      pending = true;
    }
    notify_wake.notify_one();
  }
  void send_notifications() {
    std::unique_ptr<connection> conn;
    std::unique_lock lock(notify_mutex);
    for (;;) {
      notify_wake.wait(lock,
                       [&] { return notify_pending || progress_pending || notify_stopping; });
      if (notify_stopping) return;
      std::string sql;
      if (std::exchange(notify_pending, false)) sql = fmt::format("notify {};", commit_channel);
      if (std::exchange(progress_pending, false))
        sql += fmt::format("notify {};", progress_channel);
      lock.unlock();
      try {
        if (!conn || !conn->healthy()) {
          conn = std::make_unique<connection>(opts.url);
          // A wake-up needs no durability: its commit need not wait for a WAL flush (while
          // holding the server's notification lock).
          conn->script("set synchronous_commit = off");
        }
        conn->script(sql);
      } catch (const error_exception&) {
        conn.reset();  // listeners fall back on their poll
      }
      lock.lock();
    }
  }
  ~impl() {
    stop_replicas();
    {
      std::lock_guard lock(notify_mutex);
      notify_stopping = true;
    }
    notify_wake.notify_one();
    if (notifier.joinable()) notifier.join();
  }

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

store::store(options opts) : options_(std::move(opts)), impl_(std::make_unique<impl>(options_)) {
  migrate("cleave", own_migrations);
  impl_->start_replicas();
}

store::~store() = default;

write_transaction& store::begin_write(const request_meta& meta, isolation level) {
  return impl_->acquire(meta, level == isolation::serializable
                                  ? "begin isolation level serializable"
                                  : "begin isolation level read committed");
}

read_transaction& store::begin_read(const request_meta& meta, const consistency& wanted) {
  if (auto* r = impl_->route(meta, wanted)) {
    ++r->reads;
    return r->pool->acquire(meta, "begin transaction read only");
  }
  return impl_->acquire(meta, "begin transaction read only");
}

std::vector<replica_status> store::replicas() {
  std::vector<replica_status> out;
  for (const auto& r : impl_->replicas) {
    replica_status s;
    s.url = r->url;
    s.replay_lsn = r->replay_lsn;
    s.lag_bytes = r->lag_bytes;
    s.lag_seconds = static_cast<double>(r->lag_us.load()) / 1e6;
    s.set_aside = std::chrono::microseconds(r->lag_us.load()) > options_.replica_max_lag;
    s.reads = r->reads;
    out.push_back(std::move(s));
  }
  return out;
}

position_token store::read_events_into(position_token after, std::size_t limit,
                                       std::vector<stored_event>& out,
                                       std::span<const std::string> types) {
  // Of some types: first the newest event a gap-safe reader sees (every event up to it has
  // committed; later commits come after it), then the events up to it.
  const auto end = types.empty() ? position_token{} : readable_head();
  return impl_->read([&](connection& conn) {
    const std::string xid = std::to_string(after.transaction()),
                      end_xid = std::to_string(end.transaction()),
                      type_list = types.empty() ? std::string() : json_array_of(types);
    const sql_value params[] = {std::string_view(xid),
                                static_cast<std::int64_t>(after.position()),
                                static_cast<std::int64_t>(limit),
                                std::string_view(end_xid),
                                static_cast<std::int64_t>(end.position()),
                                std::string_view(type_list)};
    auto r = types.empty() ? conn.run(select_events, std::span(params).first(3),
                                      connection::result_format::binary)
                           : conn.run(select_events_of, params, connection::result_format::binary);
    const auto rows = static_cast<std::size_t>(r.rows());
    out.resize(rows);
    for (std::size_t i = 0; i < rows; ++i) {
      auto& e = out[i];
      const int row = static_cast<int>(i);
      e.position = position_token(r.binary_u64(row, 0), r.binary_u64(row, 1));
      e.stream.assign(r.text(row, 2));
      e.stream_version = r.binary_u64(row, 3);
      e.type.assign(r.text(row, 4));
      e.payload.assign_text(r.text(row, 5));
      e.command_id.assign(r.text(row, 6));
      e.correlation_id.assign(r.text(row, 7));
      e.recorded_at_ms = unix_ms_of(static_cast<std::int64_t>(r.binary_u64(row, 8)));
    }
    if (rows > 0 && (rows == limit || types.empty())) return out.back().position;
    if (types.empty() || limit == 0) return after;
    return std::max(after, end);
  });
}

position_token store::head() {
  return impl_->read([](connection& conn) {
    auto r = conn.run(
        "select transaction_id::text, position, pg_current_wal_lsn()::text from cleave_events "
        "order by cleave_events.transaction_id desc, cleave_events.position desc limit 1");
    if (r.rows() == 0) return position_token{};
    return position_token(parse_u64(r.text(0, 0)), static_cast<std::uint64_t>(r.integer(0, 1)),
                          parse_lsn(r.text(0, 2)));
  });
}

store::migration_statements store::migration_sql() const {
  return {"select pg_advisory_xact_lock(7297306275)",
          "create table if not exists cleave_migrations(component text not null, version integer "
          "not null, name text not null, applied_at timestamptz not null default now(), "
          "primary key(component, version))",
          "insert into cleave_migrations(component, version, name) values ($1, $2, $3)"};
}

std::int64_t store::exec_over_events(write_session& tx, std::string_view statement,
                                     position_token after, position_token through) {
  const auto run = [&](std::string_view rows, std::span<const sql_value> params) {
    const std::string sql = cleave::detail::replace_all(
        statement, "{events}", fmt::format("(select * from cleave_events where {}) as events", rows));
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
  const sql_value params[] = {std::string_view(from_tx), from_pos, std::string_view(to_tx),
                              to_pos};
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

void store::refresh_materialized_view(write_session& tx, std::string_view table,
                                      std::string_view) {
  tx.exec(fmt::format("refresh materialized view concurrently {}", table), {});
}

log_span store::read_span(position_token after, std::size_t limit, position_token until) {
  if (limit == 0) return {};
  return impl_->read([&](connection& conn) {
    const std::string xid = std::to_string(after.transaction());
    // An empty `until` is no bound: the largest xid8 and position.
    const std::string until_xid =
        until.empty() ? "18446744073709551615" : std::to_string(until.transaction());
    const sql_value params[] = {std::string_view(xid), static_cast<std::int64_t>(after.position()),
                                std::string_view(until_xid),
                                until.empty() ? std::numeric_limits<std::int64_t>::max()
                                              : static_cast<std::int64_t>(until.position()),
                                static_cast<std::int64_t>(limit)};
    constexpr std::string_view range =
        "from cleave_events "
        "where (transaction_id, position) > ($1::text::xid8, $2) "
        "  and (transaction_id, position) <= ($3::text::xid8, $4) "
        "  and transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
        "order by cleave_events.transaction_id {0}, cleave_events.position {0} ";
    const std::string span = fmt::format(range, "asc");
    log_span out;
    const auto token = [](const result_set& r) {
      return position_token(parse_u64(r.text(0, 0)), static_cast<std::uint64_t>(r.integer(0, 1)));
    };
    // A whole span: its last event is the limit-th (an index-only scan that skips the others).
    const auto whole = [&] {
      auto r = conn.run(
          fmt::format("select transaction_id::text, position {} limit 1 offset $5 - 1", span),
          params);
      if (r.rows() == 1) out = {limit, token(r)};
      return r.rows() == 1;
    };
    // The last event in range (a backward index scan that stops at the first row).
    auto r = conn.run(
        fmt::format("select transaction_id::text, position {} limit 1", fmt::format(range, "desc")),
        std::span(params).first(4));
    if (r.rows() == 0) return out;
    const auto end = token(r);
    // Positions come from one sequence, so their difference tells which of the two counts is
    // likely to answer; the other one follows only when that guess was wrong.
    const bool likely_whole = end.position() >= after.position() + limit;
    if (likely_whole && whole()) return out;
    // Up to the last event: counted (an index-only scan), unless there are `limit` of them.
    const std::string end_xid = std::to_string(end.transaction());
    const sql_value upto[] = {std::string_view(xid), static_cast<std::int64_t>(after.position()),
                              std::string_view(end_xid), static_cast<std::int64_t>(end.position()),
                              static_cast<std::int64_t>(limit)};
    const auto n = static_cast<std::uint64_t>(
        conn.run(fmt::format("select count(*) from (select 1 {} limit $5) as span", span), upto)
            .integer(0, 0));
    if (n < limit) return log_span{n, end};
    whole();  // (a second try sees at least the `limit` events just counted: they have committed)
    return out;
  });
}

position_token store::readable_head() {
  return impl_->read([](connection& conn) {
    auto r = conn.run(
        "select transaction_id::text, position from cleave_events "
        "where transaction_id < pg_snapshot_xmin(pg_current_snapshot()) "
        "order by cleave_events.transaction_id desc, cleave_events.position desc limit 1");
    if (r.rows() == 0) return position_token{};
    return position_token(parse_u64(r.text(0, 0)), static_cast<std::uint64_t>(r.integer(0, 1)));
  });
}

log_distance store::distance(position_token after) {
  return impl_->read([&](connection& conn) {
    const std::string xid = std::to_string(after.transaction());
    const sql_value from[] = {std::string_view(xid), static_cast<std::int64_t>(after.position())};
    auto r = conn.run(
        "select count(*), coalesce((extract(epoch from min(recorded_at)) * 1000)::bigint, 0) "
        "from cleave_events where (transaction_id, position) > ($1::text::xid8, $2)",
        from);
    return log_distance{static_cast<std::uint64_t>(r.integer(0, 0)), r.integer(0, 1)};
  });
}

std::unique_ptr<commit_watch> store::watch_commits() {
  return std::make_unique<notify_watch>(options_.url, commit_channel);
}

void store::announce_progress() noexcept {
  try {
    impl_->announce_progress();
  } catch (const std::system_error&) {
    // No thread to send it: listeners fall back on their poll.
  }
}

std::unique_ptr<commit_watch> store::watch_progress() {
  return std::make_unique<notify_watch>(options_.url, progress_channel);
}

std::unique_ptr<lease> store::try_lease(std::string_view name) {
  auto conn = std::make_unique<connection>(options_.url);
  const sql_value key[] = {name};
  auto r = conn->run("select pg_try_advisory_lock(hashtext('cleave.lease'), hashtext($1))", key);
  if (r.text(0, 0) != "t") return nullptr;
  return std::make_unique<advisory_lease>(std::move(conn));
}

}  // namespace cleave::postgres
