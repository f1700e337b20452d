#pragma once
// The storage interface every backend implements: transactions for the buses (session_source),
// the event log read in commit order, and versioned migrations.

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/core/json.hpp>
#include <cleave/core/position.hpp>
#include <cleave/core/session.hpp>

namespace cleave {

// An event's payload as the log holds it: its JSON text, parsed into a json value only when
// something asks for one. Typed handlers decode straight from the text (decode<E>), so catching
// up a projection does not build a json tree per event.
class event_payload {
 public:
  event_payload() = default;
  event_payload(json value) : value_(std::move(value)), parsed_(true) {}  // NOLINT: implicit
  // A payload from its stored text; checked when first decoded or parsed.
  static event_payload from_text(std::string text) {
    event_payload out;
    out.text_ = std::move(text);
    return out;
  }
  // Makes this the payload of stored `text`, in the buffer this one already has.
  void assign_text(std::string_view text) {
    text_.assign(text);
    if (parsed_) {
      value_ = json();
      parsed_ = false;
    }
  }

  // The payload as a json value, parsed on first use (a malformed text throws error_exception
  // with errc::validation). The first use must not race another on the same payload.
  const json& value() const;
  // The value, to rewrite in place (upcasters); the stored text is then dropped.
  json& value();
  operator const json&() const { return value(); }  // NOLINT: implicit

  // Decodes a declared type, straight from the stored text when the payload has one.
  template <described T>
  result<T> decode(decode_mode mode) const {
    if (!parsed_) return from_json_text<T>(text_, mode);
    return from_json<T>(value_, mode);
  }
  // The JSON text: the stored one, or the value's.
  std::string dump() const { return parsed_ ? value_.dump() : text_; }

  friend bool operator==(const event_payload& a, const event_payload& b) {
    return a.value() == b.value();
  }

 private:
  std::string text_;
  mutable json value_;
  mutable bool parsed_ = false;
};

// One event as the log holds it.
struct stored_event {
  position_token position;
  std::string stream;                // empty for an event of no stream
  std::uint64_t stream_version = 0;  // 1 for a stream's first event; 0 without a stream
  std::string type;                  // the wire name it was stored under
  event_payload payload;
  std::string command_id;           // the command that wrote it, when the caller gave an id
  std::string correlation_id;       // the request it came from
  std::int64_t recorded_at_ms = 0;  // Unix time, milliseconds
};

// What a read of the log fills in of each event.
enum class event_fields {
  all,      // every member
  payload,  // position, type and payload; the other members are left empty (a memory view's
            // handlers see no more, and a narrower row reads faster)
};

namespace detail {
// Empties the members event_fields::payload leaves out, of an event read into again.
inline void clear_envelope(stored_event& e) {
  e.stream.clear();
  e.stream_version = 0;
  e.command_id.clear();
  e.correlation_id.clear();
  e.recorded_at_ms = 0;
}
}  // namespace detail

// One step of a schema: applied once, in version order, in a transaction of its own.
struct migration {
  int version;
  std::string_view name;
  std::string_view sql;  // one or more statements
};

// How far the log runs past a position.
struct log_distance {
  std::uint64_t events = 0;                // committed events after the position
  std::int64_t oldest_recorded_at_ms = 0;  // when the first of them was recorded; 0 for none
};

// A run of consecutive committed events in the log.
struct log_span {
  std::uint64_t events = 0;  // how many
  position_token last;       // the last one's position; empty when there are none
};

// Wakes a waiter when a transaction that appended events may have committed — in this process
// or in another one using the same database. Spurious wake-ups are allowed; a missed commit is
// not (a commit after the watch was made, or after wait_until last returned, ends the next wait).
class commit_watch {
 public:
  virtual ~commit_watch() = default;
  // Blocks until a commit may have happened, interrupt() is called, or `deadline` passes.
  virtual void wait_until(clock::time_point deadline) = 0;
  // Ends the current or next wait_until at once. Callable from any thread.
  virtual void interrupt() = 0;
};

// An exclusive claim on a name among every process using the database, held while the object
// lives and released when it is destroyed or its process dies (a leader's lease).
class lease {
 public:
  virtual ~lease() = default;
  // Whether the claim still holds (false once its connection to the database is gone).
  virtual bool held() = 0;
};

// A read replica as the store sees it (PostgreSQL hot standbys).
struct replica_status {
  std::string url;
  std::uint64_t replay_lsn = 0;  // how far it has replayed the primary's WAL
  std::uint64_t lag_bytes = 0;   // WAL the primary has written that it has not replayed
  double lag_seconds = 0;        // how long ago the primary wrote the oldest WAL it lacks
  bool up = true;                // answering; when not, its lag is unknown (0 here)
  bool set_aside = false;        // down or lagging past the limit: reads go elsewhere
  std::uint64_t reads = 0;       // read transactions it has served
};

// A store's data at one moment, as store::current_data_version() tells it: equal versions, equal
// data. Opaque; only compared.
struct data_version {
  std::array<std::uint32_t, 12> words{};
  friend bool operator==(const data_version&, const data_version&) = default;
};

// A database behind the buses. Thread-safe.
class store : public session_source {
 public:
  // Up to `limit` committed events after `after`, in the order the log is read. Gap-safe: never
  // returns an event past one that a still-running transaction may yet commit before it.
  std::vector<stored_event> read_events(position_token after, std::size_t limit) {
    std::vector<stored_event> out;
    read_events_into(after, limit, out, {});
    return out;
  }
  // As read_events(), into `out` (what it held is replaced), and only the events whose stored
  // type is one of `types`, unless that is empty: the others are skipped in the database. The
  // events `out` holds are reused, strings and all: a reader that keeps one vector for its
  // batches allocates little per event. Returns the position the log has been read through:
  // every event of `types` after `after` and up to it is in `out` — with `limit` events, the
  // last one; else the end of what a gap-safe reader can see, which may lie past the last event
  // in `out` (or `after` when nothing is new). `fields` says which members are read.
  virtual position_token read_events_into(position_token after, std::size_t limit,
                                          std::vector<stored_event>& out,
                                          std::span<const std::string> types,
                                          event_fields fields = event_fields::all) = 0;

  // The span of up to `limit` committed events after `after` (and at or before `until`, unless
  // it is empty), gap-safe like read_events(): how many and the last one's position, counted in
  // the database without reading the events (a set-based projection's batch bounds).
  virtual log_span read_span(position_token after, std::size_t limit,
                             position_token until = {}) = 0;

  // The position of the newest committed event (the empty token for an empty log). A reader of
  // the log gets there once every transaction that was running when it committed has ended. On
  // PostgreSQL its LSN is the primary's WAL position now: a standby that has replayed that much
  // has every commit made so far (views included).
  virtual position_token head() = 0;
  // The head as read transaction `tx` (lent by this store, or by a source stacked on it) sees
  // it: where an answer read in `tx` stands. Empty when the backend cannot tell in `tx` (the
  // default); the caller then reads head() once `tx` has ended. Opens no other transaction.
  virtual position_token head_in(read_session& tx) {
    (void)tx;
    return {};
  }

  // Applies the migrations of `component` (cleave's own, an application's, a projection's) that
  // this database has not had yet. Safe to run twice, and from two processes at once.
  // (One algorithm for every backend: each step in a write transaction of its own that holds
  // the backend's migration lock — see migration_sql().)
  void migrate(std::string_view component, std::span<const migration> migrations);

  // The versions of `component` applied so far, ascending (none on a database never migrated).
  std::vector<int> applied_migrations(std::string_view component);

  // The newest position a gap-safe reader of the log can reach now: every event at or before it
  // has committed (on PostgreSQL, below the oldest running transaction; else the head).
  virtual position_token readable_head() = 0;

  // The backend's name: "sqlite" or "postgresql" — for logs and tests. The layers above the
  // store never branch on it: what differs between backends is a method of the store.
  virtual std::string_view dialect() const noexcept = 0;

  // Runs a set-based projection's `statement` in `tx`, with `{events}` standing for the log's
  // rows after `after` and up to `through` (a derived table named `events` with the log's columns:
  // stream, stream_version, type, payload, recorded_at, …, and recorded_at_ms: Unix milliseconds,
  // a bigint on every backend), planned for that span. Returns the rows it changed.
  virtual std::int64_t exec_over_events(write_session& tx, std::string_view statement,
                                        position_token after, position_token through) = 0;

  // The schema of a materialized view `table` holding `select_sql`, unique on `key_columns`: a
  // materialized view where the database has them, else a table filled by its refresh.
  virtual std::string materialized_view_schema(std::string_view table, std::string_view select_sql,
                                               std::string_view key_columns) const = 0;
  // Brings materialized view `table` (of `select_sql`) up to date inside `tx`; readers see the
  // old rows or the new ones, never none.
  virtual void refresh_materialized_view(write_session& tx, std::string_view table,
                                         std::string_view select_sql) = 0;

  // How many committed events follow `after`, and when the oldest of them was recorded.
  virtual log_distance distance(position_token after) = 0;

  // A new watch for commits (each waiter takes its own).
  virtual std::unique_ptr<commit_watch> watch_commits() = 0;

  // Tells every process using the database that a projector's batch has committed (a view
  // moved), to wake their watch_progress() watches. Call after the commit, never inside a
  // transaction; coalesced, cheap, never throws. By default nothing: a watch_progress() that
  // notices every commit by itself needs no announcement.
  virtual void announce_progress() noexcept {}
  // A new watch for announced progress (each waiter takes its own); by default the commit
  // watch, which notices every commit in any process (SQLite's `data_version`).
  virtual std::unique_ptr<commit_watch> watch_progress() { return watch_commits(); }

  // Claims `name` when no one holds it; null when another holder has it.
  virtual std::unique_ptr<lease> try_lease(std::string_view name) = 0;

  // The read replicas queries may be served from, and how far behind each is (none by default).
  virtual std::vector<replica_status> replicas() { return {}; }

  // An SQL expression for the database's clock now, in Unix milliseconds (a bigint): leases
  // shared by processes on several machines are timed by this one clock.
  virtual std::string_view now_ms_sql() const noexcept = 0;

  // How many write transactions can make progress at once (SQLite: one writer); a group commit
  // needs no more lanes than this.
  virtual std::size_t concurrent_writers() const noexcept { return SIZE_MAX; }

  // Whether a read transaction answers from a local file, waiting for no network round trip and
  // no writer (SQLite in WAL mode): such reads may run on a thread that must not block for long.
  virtual bool local_reads() const noexcept { return false; }

  // What the stored data is now, as a token that changes with every commit — of any connection,
  // in any process — read without starting a transaction: equal tokens, equal data. Empty when
  // the backend cannot tell so cheaply (PostgreSQL, SQLite ":memory:"); then nothing may be
  // reused on the strength of it. SQLite in WAL mode reads the header of the shared wal-index
  // (the "-shm" file), which every commit rewrites. (The HTTP server's answer cache.)
  virtual std::optional<data_version> current_data_version() const noexcept { return std::nullopt; }

 protected:
  // The statements with which migrate() keeps the table of applied steps, cleave_migrations.
  struct migration_statements {
    // Run first in each step's transaction: takes the lock that makes a second migrating
    // process wait (empty when a write transaction already excludes every other writer).
    std::string_view lock;
    std::string_view time_type;  // the column type of cleave_migrations.applied_at
    std::string_view now;        // an expression of that type: the time now
    // A query of one bigint: 1 when cleave_migrations exists, else 0.
    std::string_view table_exists;
  };
  virtual migration_statements migration_sql() const = 0;
};

}  // namespace cleave
