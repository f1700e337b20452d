#include <cleave/sqlite/store.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <limits>
#include <mutex>
#include <optional>
#include <semaphore>
#include <set>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cleave/store/detail/append.hpp>
#include <cleave/store/detail/failure.hpp>
#include <cleave/store/detail/sql_text.hpp>

#include "connection.hpp"

namespace cleave::sqlite {

namespace {

using cleave::detail::next_stream_version;
using cleave::detail::stream_version_sql;
using cleave::detail::text_or_null;
using detail::connection;
using detail::statement;

constexpr migration own_migrations[] = {
    {1, "event log",
     "create table cleave_events("
     "  position integer primary key autoincrement,"
     "  stream text not null,"
     "  stream_version integer not null,"
     "  type text not null,"
     "  payload text not null,"
     "  command_id text,"
     "  correlation_id text,"
     "  recorded_at integer not null default (cast((julianday('now') - 2440587.5) * 86400000 as "
     "integer)));"
     "create unique index cleave_events_stream on cleave_events(stream, stream_version)"
     "  where stream <> '';"},
    {2, "command outcomes",
     "create table cleave_commands("
     "  command_id text primary key,"
     "  command_type text not null,"
     "  outcome text not null,"
     "  position integer not null,"
     "  recorded_at integer not null default (cast((julianday('now') - 2440587.5) * 86400000 as "
     "integer)));"
     "create index cleave_commands_age on cleave_commands(recorded_at);"},
    {3, "snapshots",
     "create table cleave_snapshots("
     "  stream text primary key,"
     "  version bigint not null,"
     "  state text not null);"},
};

// Expired outcomes are purged once every this many recorded outcomes.
constexpr std::uint64_t purge_every = 1024;

constexpr std::string_view select_events =
    "select position, stream, stream_version, type, payload, command_id, correlation_id, "
    "recorded_at from cleave_events where position > $1 order by position limit $2";
// The same, up to a position ($3) and of some types ($4 onwards, `types` of them): a list of
// values, which SQLite checks faster than a table of them.
std::string select_events_of(std::size_t types) {
  std::string list;
  for (std::size_t i = 0; i < types; ++i) list += fmt::format("{}${}", i ? ", " : "", i + 4);
  return fmt::format(
      "select position, stream, stream_version, type, payload, command_id, correlation_id, "
      "recorded_at from cleave_events where position > $1 and position <= $3 and type in ({}) "
      "order by position limit $2",
      list);
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Resets a statement however the scope is left, so a throwing row callback leaves no statement
// half-run.
struct reset_on_exit {
  statement& s;
  ~reset_on_exit() { s.reset(); }
};

void run_query(connection& conn, std::string_view sql, std::span<const sql_value> params,
               row_callback on_row) {
  auto& s = conn.prepare(sql, params);
  reset_on_exit guard{s};
  while (s.step()) on_row(s);
}

std::int64_t scalar(connection& conn, std::string_view sql,
                    std::span<const sql_value> params = {}) {
  auto& s = conn.prepare(sql, params);
  reset_on_exit guard{s};
  return s.step() ? s.int_at(0) : 0;
}

// Notices commits by polling: `PRAGMA data_version` on a connection of its own changes whenever
// any other connection, in any process, commits (a read of shared memory, no I/O); an in-memory
// database has only this process's commit counter.
class data_version_watch final : public commit_watch {
 public:
  data_version_watch(std::unique_ptr<connection> conn, const std::atomic<std::uint64_t>& commits)
      : conn_(std::move(conn)), commits_(commits), seen_(current()) {}

  void wait_until(clock::time_point deadline) override {
    std::unique_lock lock(mutex_);
    for (;;) {
      if (std::exchange(interrupted_, false)) return;
      if (const auto now = current(); now != seen_) {
        seen_ = now;
        return;
      }
      const auto t = clock::now();
      if (t >= deadline) return;
      wake_.wait_until(lock, std::min(deadline, t + poll_interval));
    }
  }
  void interrupt() override {
    {
      std::lock_guard lock(mutex_);
      interrupted_ = true;
    }
    wake_.notify_all();
  }

 private:
  static constexpr auto poll_interval = std::chrono::milliseconds(1);
  std::uint64_t current() {
    if (!conn_) return commits_.load(std::memory_order_acquire);
    return static_cast<std::uint64_t>(scalar(*conn_, "pragma data_version"));
  }

  std::unique_ptr<connection> conn_;
  const std::atomic<std::uint64_t>& commits_;
  std::uint64_t seen_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool interrupted_ = false;
};

// A lease is an exclusive flock() on a file beside the database: the kernel drops it when the
// process dies. For an in-memory database (one process), a set of held names.
class file_lease final : public lease {
 public:
  explicit file_lease(int fd) noexcept : fd_(fd) {}
  ~file_lease() override { ::close(fd_); }
  bool held() override { return true; }

 private:
  int fd_;
};

class memory_lease final : public lease {
 public:
  memory_lease(std::string name, std::mutex& m, std::set<std::string, std::less<>>& held)
      : name_(std::move(name)), mutex_(m), held_(held) {}
  ~memory_lease() override {
    std::lock_guard lock(mutex_);
    held_.erase(name_);
  }
  bool held() override { return true; }

 private:
  std::string name_;
  std::mutex& mutex_;
  std::set<std::string, std::less<>>& held_;
};

std::string lease_file(const std::string& db_path, std::string_view name) {
  std::string out = db_path + ".lease-";
  for (char c : name) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return out;
}

}  // namespace

struct store::impl {
  // The single write transaction; the store lends it out under write_mutex.
  struct writer final : write_transaction {
    impl* owner = nullptr;
    // Copied from the request, which need not outlive the transaction.
    std::string command_id, correlation_id;
    std::int64_t last_position = 0;

    void query(std::string_view sql, std::span<const sql_value> params,
               row_callback on_row) override {
      run_query(*owner->write_conn, sql, params, on_row);
    }
    std::int64_t exec(std::string_view sql, std::span<const sql_value> params) override {
      return owner->write_conn->exec(sql, params);
    }
    void script(std::string_view sql) override { owner->write_conn->script(sql); }
    std::uint64_t append(const pending_event& e) override {
      auto& conn = *owner->write_conn;
      std::int64_t version = 0;
      if (!e.stream.empty()) {
        const sql_value stream[] = {e.stream};
        const auto current = static_cast<std::uint64_t>(scalar(conn, stream_version_sql, stream));
        version =
            static_cast<std::int64_t>(next_stream_version(e.stream, current, e.expected_version));
      }
      // PostgreSQL's jsonb cannot hold U+0000; refused here too, for one meaning on both.
      if (cleave::detail::nul_in_json(e.payload))
        cleave::detail::throw_db_failure(cleave::detail::db_failure::nul_character,
                                         fmt::format("an event of type '{}' holds U+0000", e.type),
                                         correlation_id);
      const std::string payload = e.payload.dump();
      const sql_value params[] = {e.stream,
                                  version,
                                  e.type,
                                  std::string_view(payload),
                                  text_or_null(command_id),
                                  text_or_null(correlation_id),
                                  now_ms()};
      conn.exec(
          "insert into cleave_events(stream, stream_version, type, payload, command_id, "
          "correlation_id, recorded_at) values ($1, $2, $3, $4, $5, $6, $7)",
          params);
      last_position = sqlite3_last_insert_rowid(conn.handle());
      return static_cast<std::uint64_t>(version);
    }
    std::optional<remembered_outcome> remembered() override {
      const auto oldest = now_ms() - std::chrono::duration_cast<std::chrono::milliseconds>(
                                         owner->opts.outcome_retention)
                                         .count();
      const sql_value key[] = {std::string_view(command_id), oldest};
      auto& s = owner->write_conn->prepare(
          "select command_type, outcome, position from cleave_commands where command_id = $1 "
          "and recorded_at >= $2",
          key);
      reset_on_exit guard{s};
      if (!s.step()) return std::nullopt;
      auto stored = parse_json(s.text_at(1));
      auto prior = stored ? outcome_from_json(*stored) : std::unexpected(stored.error());
      if (!prior) throw error_exception(prior.error());
      prior->command_type = s.text_at(0);
      prior->position = position_token(0, static_cast<std::uint64_t>(s.int_at(2)));
      return std::move(*prior);
    }
    void remember(const remembered_outcome& outcome) override {
      auto& conn = *owner->write_conn;
      const std::string text = outcome_to_json(outcome).dump();
      const auto now = now_ms();
      const auto position = static_cast<std::int64_t>(position_so_far().position());
      // `insert or replace`: an outcome that expired but was not purged yet gives way. (SQLite
      // runs one writer at a time, so a live record was already found by remembered().)
      const sql_value row[] = {std::string_view(command_id), std::string_view(outcome.command_type),
                               std::string_view(text), position, now};
      conn.exec(
          "insert or replace into cleave_commands(command_id, command_type, outcome, position, "
          "recorded_at) values ($1, $2, $3, $4, $5)",
          row);
      if (++owner->outcomes_recorded % purge_every == 0) {
        const sql_value oldest[] = {now - std::chrono::duration_cast<std::chrono::milliseconds>(
                                              owner->opts.outcome_retention)
                                              .count()};
        conn.exec("delete from cleave_commands where recorded_at < $1", oldest);
      }
    }
    void rebind(const request_meta& meta) override {
      command_id.assign(meta.command_id);
      correlation_id.assign(meta.correlation_id);
      owner->write_conn->set_correlation_id(meta.correlation_id);
    }
    position_token position_so_far() override {
      if (last_position == 0)
        last_position =
            scalar(*owner->write_conn, "select coalesce(max(position), 0) from cleave_events");
      return position_token(0, static_cast<std::uint64_t>(last_position));
    }

    position_token commit() override {
      auto& conn = *owner->write_conn;
      try {
        position_so_far();
        conn.exec("commit", {});
      } catch (...) {
        rollback();
        throw;
      }
      const auto position = static_cast<std::uint64_t>(last_position);
      owner->commits.fetch_add(1, std::memory_order_release);
      owner->write_mutex.unlock();
      return position_token(0, position);
    }
    void rollback() noexcept override {
      try {
        owner->write_conn->exec("rollback", {});
      } catch (...) {
        // A failed rollback leaves SQLite's own automatic rollback; nothing more to undo.
      }
      owner->write_mutex.unlock();
    }
  };

  // A read-only transaction on a connection of its own (or on the writer's, for ":memory:").
  struct reader final : read_transaction {
    impl* owner = nullptr;
    std::unique_ptr<connection> own;
    connection* conn = nullptr;

    void query(std::string_view sql, std::span<const sql_value> params,
               row_callback on_row) override {
      run_query(*conn, sql, params, on_row);
    }
    void finish() noexcept override {
      try {
        conn->exec("commit", {});
      } catch (...) {
        // A read-only transaction has nothing to lose; the connection stays usable.
      }
      owner->give_back(this);
    }
  };

  explicit impl(const options& o) : opts(o), memory(o.path == ":memory:" || o.path.empty()) {
    if (!memory) {
      auto folder = std::filesystem::path(o.path).parent_path();
      if (!folder.empty()) std::filesystem::create_directories(folder);
    }
    write_conn = std::make_unique<connection>(
        memory ? ":memory:" : o.path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, o.busy_timeout);
    if (!memory) write_conn->script("pragma journal_mode = wal");
    write_conn->script(o.sync == durability::full ? "pragma synchronous = full"
                                                  : "pragma synchronous = normal");
    write_conn->script("pragma foreign_keys = on");
    write_tx.owner = this;
  }

  write_transaction& begin_write(const request_meta& meta) {
    write_mutex.lock();
    try {
      write_conn->exec("begin immediate", {});
    } catch (...) {
      write_mutex.unlock();
      throw;
    }
    write_tx.rebind(meta);
    write_tx.last_position = 0;
    return write_tx;
  }

  read_transaction& begin_read() {
    reader* r = nullptr;
    if (memory) {
      write_mutex.lock();  // one connection: reads wait for the writer, under query_only
      memory_reader.owner = this;
      memory_reader.conn = write_conn.get();
      r = &memory_reader;
      try {
        write_conn->script("pragma query_only = 1");
      } catch (...) {
        write_mutex.unlock();
        throw;
      }
    } else {
      std::lock_guard lock(readers_mutex);
      if (free_readers.empty()) {
        auto fresh = std::make_unique<reader>();
        fresh->owner = this;
        fresh->own =
            std::make_unique<connection>(opts.path, SQLITE_OPEN_READONLY, opts.busy_timeout);
        fresh->own->script("pragma query_only = 1");
        // Pages through a memory map rather than a read() each: catching up a projection reads
        // the log at several times the speed.
        fresh->own->script("pragma mmap_size = 268435456");
        fresh->conn = fresh->own.get();
        free_readers.push_back(fresh.get());
        readers.push_back(std::move(fresh));
      }
      r = free_readers.back();
      free_readers.pop_back();
    }
    try {
      r->conn->exec("begin", {});
    } catch (...) {
      give_back(r);
      throw;
    }
    return *r;
  }

  void give_back(reader* r) noexcept {
    if (r == &memory_reader) {
      try {
        write_conn->script("pragma query_only = 0");
      } catch (...) {
        // Unreachable in practice: the pragma cannot fail on an open connection.
      }
      write_mutex.unlock();
      return;
    }
    std::lock_guard lock(readers_mutex);
    free_readers.push_back(r);
  }

  // Runs `body` in a read transaction that is always finished.
  template <class F>
  auto read(F&& body) {
    auto& tx = static_cast<reader&>(begin_read());
    const read_scope ending(tx);
    return body(*tx.conn);
  }

  options opts;
  bool memory;
  std::atomic<std::uint64_t> commits{0};  // write transactions committed by this store
  // The single writer's lock. Not a std::mutex: under group commit the shared transaction may
  // end (and give the lock back) on another thread than the one that began it, which a
  // std::mutex forbids; a semaphore allows it.
  class write_lock {
   public:
    void lock() { free_.acquire(); }
    void unlock() { free_.release(); }

   private:
    std::binary_semaphore free_{1};
  };
  write_lock write_mutex;
  std::uint64_t outcomes_recorded = 0;  // guarded by write_mutex
  std::unique_ptr<connection> write_conn;
  writer write_tx;
  reader memory_reader;
  std::mutex readers_mutex;
  std::vector<std::unique_ptr<reader>> readers;
  std::vector<reader*> free_readers;
  std::mutex leases_mutex;
  std::set<std::string, std::less<>> memory_leases;
};

store::store(options opts) : options_(std::move(opts)), impl_(std::make_unique<impl>(options_)) {
  migrate("cleave", own_migrations);
}

store::~store() = default;

// One writer at a time: every level is serializable here.
write_transaction& store::begin_write(const request_meta& meta, isolation) {
  return impl_->begin_write(meta);
}

read_transaction& store::begin_read(const request_meta&, const consistency&) {
  return impl_->begin_read();
}

position_token store::read_events_into(position_token after, std::size_t limit,
                                       std::vector<stored_event>& out,
                                       std::span<const std::string> types) {
  return impl_->read([&](connection& conn) {
    // Of some types: up to the head as this read transaction sees it (one writer at a time, so
    // every event up to it has committed).
    const auto end = types.empty() ? 0
                                   : scalar(conn,
                                            "select coalesce(max(position), 0) from "
                                            "cleave_events");
    std::vector<sql_value> params{static_cast<std::int64_t>(after.position()),
                                  static_cast<std::int64_t>(limit), end};
    for (const auto& type : types) params.emplace_back(std::string_view(type));
    auto& s = types.empty() ? conn.prepare(select_events, std::span(params).first(2))
                            : conn.prepare(select_events_of(types.size()), params);
    reset_on_exit guard{s};
    out.reserve(std::min<std::size_t>(limit, 1 << 16));
    std::size_t n = 0;
    while (s.step()) {
      auto& e = n < out.size() ? out[n] : out.emplace_back();
      ++n;
      e.position = position_token(0, static_cast<std::uint64_t>(s.int_at(0)));
      e.stream.assign(s.text_at(1));
      e.stream_version = static_cast<std::uint64_t>(s.int_at(2));
      e.type.assign(s.text_at(3));
      e.payload.assign_text(s.text_at(4));
      e.command_id.assign(s.text_at(5));
      e.correlation_id.assign(s.text_at(6));
      e.recorded_at_ms = s.int_at(7);
    }
    out.resize(n);
    if (n > 0 && (n == limit || types.empty())) return out.back().position;
    if (types.empty() || limit == 0) return after;
    return std::max(after, position_token(0, static_cast<std::uint64_t>(end)));
  });
}

position_token store::head() {
  return impl_->read([](connection& conn) {
    return position_token(0, static_cast<std::uint64_t>(scalar(
                                 conn, "select coalesce(max(position), 0) from cleave_events")));
  });
}

store::migration_statements store::migration_sql() const {
  // The single writer's transaction (begin immediate) already excludes every other writer.
  return {"",
          "create table if not exists cleave_migrations(component text not null, version integer "
          "not null, name text not null, applied_at integer not null, primary key(component, "
          "version))",
          "insert into cleave_migrations(component, version, name, applied_at) values ($1, $2, $3, "
          "cast((julianday('now') - 2440587.5) * 86400000 as integer))"};
}

std::int64_t store::exec_over_events(write_session& tx, std::string_view statement,
                                     position_token after, position_token through) {
  const std::string sql = cleave::detail::replace_all(
      statement, "{events}",
      "(select * from cleave_events where position > $1 and position <= $2) as events");
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

log_span store::read_span(position_token after, std::size_t limit, position_token until) {
  return impl_->read([&](connection& conn) {
    log_span out;
    const sql_value params[] = {static_cast<std::int64_t>(after.position()),
                                until.empty() ? std::numeric_limits<std::int64_t>::max()
                                              : static_cast<std::int64_t>(until.position()),
                                static_cast<std::int64_t>(limit)};
    run_query(conn,
              "select count(*), coalesce(max(position), 0) from (select position from "
              "cleave_events where position > $1 and position <= $2 order by position limit $3)",
              params, [&](const row_view& row) {
                out.events = static_cast<std::uint64_t>(std::get<std::int64_t>(row.get(0)));
                if (out.events)
                  out.last = position_token(
                      0, static_cast<std::uint64_t>(std::get<std::int64_t>(row.get(1))));
              });
    return out;
  });
}

position_token store::readable_head() {
  return head();  // one writer at a time: positions commit in order
}

log_distance store::distance(position_token after) {
  return impl_->read([&](connection& conn) {
    log_distance d;
    const sql_value from[] = {static_cast<std::int64_t>(after.position())};
    run_query(conn,
              "select count(*), coalesce(min(recorded_at), 0) from cleave_events where position > "
              "$1",
              from, [&](const row_view& row) {
                d.events = static_cast<std::uint64_t>(std::get<std::int64_t>(row.get(0)));
                d.oldest_recorded_at_ms = std::get<std::int64_t>(row.get(1));
              });
    return d;
  });
}

std::unique_ptr<commit_watch> store::watch_commits() {
  std::unique_ptr<connection> conn;
  if (!impl_->memory)
    conn = std::make_unique<connection>(options_.path, SQLITE_OPEN_READONLY, options_.busy_timeout);
  return std::make_unique<data_version_watch>(std::move(conn), impl_->commits);
}

std::unique_ptr<lease> store::try_lease(std::string_view name) {
  if (impl_->memory) {
    std::lock_guard lock(impl_->leases_mutex);
    if (!impl_->memory_leases.emplace(name).second) return nullptr;
    return std::make_unique<memory_lease>(std::string(name), impl_->leases_mutex,
                                          impl_->memory_leases);
  }
  const auto file = lease_file(options_.path, name);
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    throw error_exception({errc::unavailable, fmt::format("cannot open lease file {}", file), {}});
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return nullptr;
  }
  return std::make_unique<file_lease>(fd);
}

}  // namespace cleave::sqlite
