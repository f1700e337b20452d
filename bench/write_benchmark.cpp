// cleave_bench_write: commands/s through the command bus against the same statements issued
// directly, in the same transaction shape and durability, in the same run. One JSON line per case
// on stdout (case, rate, baseline rate, ratio); progress on stderr.
//
// Each command inserts a state row and appends one event to its stream. The baseline issues the
// same effect by hand: BEGIN, the state insert, the stream-version read, the event insert
// (returning its position), COMMIT (on PostgreSQL with the commit LSN in the same round trip), at
// the same isolation — and on PostgreSQL at serializable runs a transaction again when the server
// gives it up, as the bus does. The postgres_append cases compare against the best hand-written
// libpq instead: the same two inserts, the version computed in the statement, pipelined with
// BEGIN and COMMIT in one round trip; and report a one-row insert transaction (pgbench's
// simplest) beside. Sides alternate in slices so drift on a shared machine hits them alike. Each
// line states the isolation (SQLite's single writer is serializable).
//
// PostgreSQL cases run when CLEAVE_BENCH_PG_URL names a server (make bench starts one).
// CLEAVE_BENCH_WRITE_CASES=postgres_append,sqlite_full runs the cases whose names begin so.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <libpq-fe.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <cleave/cleave.hpp>
#include <cleave/postgres/store.hpp>
#include <cleave/sqlite/store.hpp>
#include <cleave/store/group_commit.hpp>

#include "bench_messages.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr cleave::migration schema[] = {
    {1, "items", "create table items(id text primary key, quantity bigint not null)"}};

}  // namespace

namespace bench {
// The same command, opted down to read committed (a plain insert keyed by the command).
struct place_item_read_committed {
  std::string id;
  std::int64_t quantity = 0;
  static constexpr auto isolation = cleave::isolation::read_committed;
};
CLEAVE_COMMAND(place_item_read_committed, "bench.place_item_read_committed", id, quantity)
}  // namespace bench

namespace {

template <class C>
cleave::result<void> place(const C& c, cleave::write_context& tx) {
  tx.exec("insert into items(id, quantity) values ($1, $2)", c.id, c.quantity);
  tx.emit(c.id, bench::item_placed{c.id, c.quantity});
  return {};
}

// Sends one command; a conflict left after the bus's own retries is counted, anything else ends
// the run.
template <class C>
void send_or_exit(cleave::command_bus& bus, const char* side, const C& command,
                  std::atomic<std::uint64_t>& conflicts) {
  auto r = bus.send(command);
  if (r) return;
  if (r.error().category == cleave::errc::conflict) {
    ++conflicts;
    return;
  }
  std::fprintf(stderr, "%s: %s\n", side, r.error().describe().c_str());
  std::exit(1);
}

// Runs `clients` threads calling op(client, n) for `slice`; returns operations done.
std::uint64_t run_slice(int clients, std::chrono::milliseconds slice,
                        const std::function<void(int client, std::uint64_t n)>& op) {
  std::atomic<std::uint64_t> done{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) op(c, n++);
      done += n;
    });
  }
  std::this_thread::sleep_for(slice);
  stop = true;
  for (auto& t : threads) t.join();
  return done;
}

struct measured {
  double value;     // framework, operations/s
  double baseline;  // baseline, operations/s
};

using operation = std::function<void(int, std::uint64_t)>;

// Alternates the sides' slices, in turn; each side gets `rounds` slices. Returns each side's
// operations/s.
std::vector<double> compare_all(int clients, int rounds, std::chrono::milliseconds slice,
                                const std::vector<operation>& sides) {
  std::vector<std::uint64_t> done(sides.size(), 0);
  for (int r = 0; r < rounds; ++r)
    for (std::size_t i = 0; i < sides.size(); ++i) done[i] += run_slice(clients, slice, sides[i]);
  const double seconds = std::chrono::duration<double>(slice).count() * rounds;
  std::vector<double> rates;
  for (const auto d : done) rates.push_back(static_cast<double>(d) / seconds);
  return rates;
}

// Alternates baseline and framework slices; each side gets `rounds` slices.
measured compare(int clients, int rounds, std::chrono::milliseconds slice,
                 const operation& framework, const operation& baseline) {
  const auto rates = compare_all(clients, rounds, slice, {baseline, framework});
  return {rates[1], rates[0]};
}

void report(std::string_view name, const measured& m, int clients, std::string_view extra = "") {
  std::printf(
      "{\"bench\":\"write\",\"case\":\"%.*s\",\"unit\":\"commands/s\",\"value\":%.0f,"
      "\"baseline\":%.0f,\"ratio\":%.3f,\"clients\":%d%.*s}\n",
      static_cast<int>(name.size()), name.data(), m.value, m.baseline, m.value / m.baseline,
      clients, static_cast<int>(extra.size()), extra.data());
  std::fflush(stdout);
}

std::string unique_id(const char* side, int client, std::uint64_t n) {
  return fmt::format("{}-{}-{}-{}", side, client, n, clock_type::now().time_since_epoch().count());
}

// ---- SQLite ----

class sqlite_baseline {
 public:
  sqlite_baseline(const std::string& path, bool full) {
    sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE, nullptr);
    sqlite3_busy_timeout(db_, 5000);
    sqlite3_exec(db_, full ? "pragma synchronous=full" : "pragma synchronous=normal", nullptr,
                 nullptr, nullptr);
    prepare(begin_, "begin immediate");
    prepare(state_, "insert into items(id, quantity) values ($1, $2)");
    prepare(version_,
            "select coalesce(max(stream_version), 0) from cleave_events where stream = $1 and "
            "stream <> ''");
    prepare(event_,
            "insert into cleave_events(stream, stream_version, type, payload, command_id, "
            "correlation_id, recorded_at) values ($1, $2, $3, $4, $5, $6, $7)");
    prepare(commit_, "commit");
  }
  ~sqlite_baseline() {
    for (auto* s : {begin_, state_, version_, event_, commit_}) sqlite3_finalize(s);
    sqlite3_close_v2(db_);
  }

  void command(const std::string& id, std::int64_t quantity) {
    step(begin_);
    sqlite3_bind_text(state_, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
    sqlite3_bind_int64(state_, 2, quantity);
    step(state_);
    sqlite3_bind_text(version_, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
    sqlite3_step(version_);
    const auto version = sqlite3_column_int64(version_, 0) + 1;
    sqlite3_reset(version_);
    const std::string payload = cleave::json{{"id", id}, {"quantity", quantity}}.dump();
    sqlite3_bind_text(event_, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
    sqlite3_bind_int64(event_, 2, version);
    sqlite3_bind_text(event_, 3, "bench.item_placed", -1, SQLITE_STATIC);
    sqlite3_bind_text(event_, 4, payload.data(), static_cast<int>(payload.size()), SQLITE_STATIC);
    sqlite3_bind_null(event_, 5);
    sqlite3_bind_null(event_, 6);
    sqlite3_bind_int64(event_, 7,
                       std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count());
    step(event_);
    (void)sqlite3_last_insert_rowid(db_);
    step(commit_);
  }

 private:
  void prepare(sqlite3_stmt*& s, const char* sql) { sqlite3_prepare_v2(db_, sql, -1, &s, nullptr); }
  void step(sqlite3_stmt* s) {
    if (sqlite3_step(s) != SQLITE_DONE) {
      std::fprintf(stderr, "baseline: %s\n", sqlite3_errmsg(db_));
      std::exit(1);
    }
    sqlite3_reset(s);
  }
  sqlite3* db_ = nullptr;
  sqlite3_stmt *begin_ = nullptr, *state_ = nullptr, *version_ = nullptr, *event_ = nullptr,
               *commit_ = nullptr;
};

// Returns the framework's rate.
double sqlite_case(std::string_view name, cleave::sqlite::durability sync,
                   std::chrono::milliseconds slice) {
  const std::string dir = fmt::format("/tmp/cleave-bench-write-{}", ::getpid());
  std::filesystem::remove_all(dir);
  const std::string path = dir + "/bench.db";
  cleave::sqlite::store db{{.path = path, .sync = sync}};
  db.migrate("bench", schema);
  cleave::command_bus commands{&db};
  commands.add(&place<bench::place_item>);
  sqlite_baseline raw(path, sync == cleave::sqlite::durability::full);
  std::atomic<std::uint64_t> conflicts{0};
  auto m = compare(
      1, 3, slice,
      [&](int c, std::uint64_t n) {
        send_or_exit(commands, "framework", bench::place_item{unique_id("f", c, n), 1}, conflicts);
      },
      [&](int c, std::uint64_t n) { raw.command(unique_id("b", c, n), 1); });
  report(name, m, 1,
         fmt::format(",\"isolation\":\"serializable\",\"synchronous\":\"{}\"",
                     sync == cleave::sqlite::durability::full ? "full" : "normal"));
  std::filesystem::remove_all(dir);
  return m.value;
}

// ---- PostgreSQL ----

class pg_baseline {
 public:
  pg_baseline(const std::string& url, cleave::isolation level)
      : conn_(PQconnectdb(url.c_str())),
        begin_(level == cleave::isolation::serializable ? "begin isolation level serializable"
                                                        : "begin isolation level read committed") {
    prepare("state", "insert into items(id, quantity) values ($1, $2)");
    prepare("version",
            "select coalesce(max(stream_version), 0) from cleave_events where stream = $1 and "
            "stream <> ''");
    prepare("event",
            "insert into cleave_events(stream, stream_version, type, payload, command_id, "
            "correlation_id) values ($1, $2, $3, $4::jsonb, $5, $6) returning position, "
            "transaction_id::text");
  }
  ~pg_baseline() { PQfinish(conn_); }

  // Runs a command, again while the server gives it up (serialization failure or deadlock).
  void command(const std::string& id, std::int64_t quantity) {
    for (;;) {
      try {
        attempt(id, quantity);
        return;
      } catch (const given_up&) {
        exec("rollback");
        ++retries;
      }
    }
  }
  std::uint64_t retries = 0;

 private:
  struct given_up {};

  void attempt(const std::string& id, std::int64_t quantity) {
    exec(begin_);
    const std::string q = std::to_string(quantity);
    run("state", {id.c_str(), q.c_str()});
    PGresult* v = run("version", {id.c_str()}, true);
    const std::string version = std::to_string(std::atoll(PQgetvalue(v, 0, 0)) + 1);
    PQclear(v);
    const std::string payload = cleave::json{{"id", id}, {"quantity", quantity}}.dump();
    PGresult* e =
        run("event",
            {id.c_str(), version.c_str(), "bench.item_placed", payload.c_str(), nullptr, nullptr},
            true);
    PQclear(e);
    exec("commit; select pg_current_wal_lsn()::text");
  }

  void prepare(const char* name, const char* sql) {
    PQclear(PQprepare(conn_, name, sql, 0, nullptr));
  }
  void exec(const char* sql) {
    PGresult* r = PQexec(conn_, sql);
    check(r);
    PQclear(r);
  }
  PGresult* run(const char* name, std::vector<const char*> params, bool keep = false) {
    PGresult* r = PQexecPrepared(conn_, name, static_cast<int>(params.size()), params.data(),
                                 nullptr, nullptr, 0);
    check(r);
    if (!keep) {
      PQclear(r);
      return nullptr;
    }
    return r;
  }
  void check(PGresult* r) {
    auto s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
      const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
      if (state && (std::string_view(state) == "40001" || std::string_view(state) == "40P01")) {
        PQclear(r);
        throw given_up{};
      }
      std::fprintf(stderr, "baseline: %s\n", PQresultErrorMessage(r));
      std::exit(1);
    }
  }
  PGconn* conn_;
  const char* begin_;
};

// The best hand-written libpq for a command's effect: BEGIN, the state insert, the event insert
// with its stream version computed in the statement, COMMIT and the commit's LSN, all sent in
// one round trip (pipeline mode); at serializable, run again when the server gives it up.
class pg_pipelined_baseline {
 public:
  explicit pg_pipelined_baseline(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
    prepare("state", "insert into items(id, quantity) values ($1, $2)");
    prepare("event",
            "insert into cleave_events(stream, stream_version, type, payload) "
            "select $1, coalesce(max(stream_version), 0) + 1, $2, $3::jsonb from cleave_events "
            "where stream = $1 and stream <> '' returning position, transaction_id::text");
    PQenterPipelineMode(conn_);
  }
  ~pg_pipelined_baseline() { PQfinish(conn_); }

  void command(const std::string& id, std::int64_t quantity) {
    const std::string q = std::to_string(quantity);
    const std::string payload = cleave::json{{"id", id}, {"quantity", quantity}}.dump();
    while (!attempt(id, q, payload)) ++retries;
  }
  std::uint64_t retries = 0;

 private:
  // False when the server gave the transaction up (serialization failure or deadlock).
  bool attempt(const std::string& id, const std::string& q, const std::string& payload) {
    send("begin isolation level serializable");
    const char* state[] = {id.c_str(), q.c_str()};
    PQsendQueryPrepared(conn_, "state", 2, state, nullptr, nullptr, 0);
    const char* event[] = {id.c_str(), "bench.item_placed", payload.c_str()};
    PQsendQueryPrepared(conn_, "event", 3, event, nullptr, nullptr, 0);
    send("commit");
    send("select pg_current_wal_lsn()::text");
    PQpipelineSync(conn_);
    const bool ok = drain();
    if (!ok) {
      send("rollback");
      PQpipelineSync(conn_);
      drain();
    }
    return ok;
  }
  void send(const char* sql) {
    PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr, 0);
  }
  // Reads every answer up to the sync; false when a statement was given up.
  bool drain() {
    bool ok = true;
    for (;;) {
      PGresult* r = PQgetResult(conn_);
      if (!r) continue;  // the end of one statement's answer
      const auto s = PQresultStatus(r);
      if (s == PGRES_PIPELINE_SYNC) {
        PQclear(r);
        return ok;
      }
      if (s == PGRES_FATAL_ERROR) {
        const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (!state || (std::string_view(state) != "40001" && std::string_view(state) != "40P01")) {
          std::fprintf(stderr, "pipelined baseline: %s\n", PQresultErrorMessage(r));
          std::exit(1);
        }
        ok = false;
      }
      PQclear(r);
    }
  }
  void prepare(const char* name, const char* sql) {
    PQclear(PQprepare(conn_, name, sql, 0, nullptr));
  }
  PGconn* conn_;
};

// A pgbench-style one-row insert transaction: one statement in its own transaction.
class pg_one_row_insert {
 public:
  explicit pg_one_row_insert(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
    PQclear(PQprepare(conn_, "row", "insert into items(id, quantity) values ($1, $2)", 0, nullptr));
  }
  ~pg_one_row_insert() { PQfinish(conn_); }
  void insert(const std::string& id) {
    const char* params[] = {id.c_str(), "1"};
    PGresult* r = PQexecPrepared(conn_, "row", 2, params, nullptr, nullptr, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      std::fprintf(stderr, "one-row insert: %s\n", PQresultErrorMessage(r));
      std::exit(1);
    }
    PQclear(r);
  }

 private:
  PGconn* conn_;
};

// A command that inserts one row and emits one event, through the bus, against the pipelined
// hand-written baseline and a one-row insert transaction, at the same client count.
void postgres_append_case(std::string_view name, const std::string& url, int clients,
                          std::chrono::milliseconds slice) {
  cleave::postgres::store db{{.url = url, .pool_size = static_cast<std::size_t>(clients)}};
  db.migrate("bench", schema);
  cleave::command_bus commands{&db};
  commands.add(&place<bench::place_item>);
  std::vector<std::unique_ptr<pg_pipelined_baseline>> raw;
  std::vector<std::unique_ptr<pg_one_row_insert>> rows;
  for (int c = 0; c < clients; ++c) {
    raw.push_back(std::make_unique<pg_pipelined_baseline>(url));
    rows.push_back(std::make_unique<pg_one_row_insert>(url));
  }
  std::atomic<std::uint64_t> conflicts{0};
  const auto rates = compare_all(
      clients, 3, slice,
      {[&](int c, std::uint64_t n) {
         raw[static_cast<std::size_t>(c)]->command(unique_id("b", c, n), 1);
       },
       [&](int c, std::uint64_t n) {
         send_or_exit(commands, "framework", bench::place_item{unique_id("f", c, n), 1}, conflicts);
       },
       [&](int c, std::uint64_t n) {
         rows[static_cast<std::size_t>(c)]->insert(unique_id("r", c, n));
       }});
  std::uint64_t baseline_retries = 0;
  for (const auto& r : raw) baseline_retries += r->retries;
  report(name, {rates[1], rates[0]}, clients,
         fmt::format(",\"isolation\":\"serializable\",\"baseline_shape\":\"pipelined\","
                     "\"one_row_insert_tx\":{:.0f},\"ratio_to_one_row_insert_tx\":{:.3f},"
                     "\"conflicts\":{},\"baseline_retries\":{}",
                     rates[2], rates[1] / rates[2], conflicts.load(), baseline_retries));
}

// C is the command: bench::place_item (serializable, the default) or one that opts down.
template <class C>
void postgres_case(std::string_view name, const std::string& url, int clients,
                   std::chrono::milliseconds slice) {
  constexpr auto level = cleave::isolation_of<C>();
  cleave::postgres::store db{{.url = url, .pool_size = static_cast<std::size_t>(clients)}};
  db.migrate("bench", schema);
  cleave::command_bus commands{&db};
  commands.add(&place<C>);
  std::vector<std::unique_ptr<pg_baseline>> raw;
  for (int c = 0; c < clients; ++c) raw.push_back(std::make_unique<pg_baseline>(url, level));
  std::atomic<std::uint64_t> conflicts{0};
  auto m = compare(
      clients, 3, slice,
      [&](int c, std::uint64_t n) {
        send_or_exit(commands, "framework", C{unique_id("f", c, n), 1}, conflicts);
      },
      [&](int c, std::uint64_t n) {
        raw[static_cast<std::size_t>(c)]->command(unique_id("b", c, n), 1);
      });
  std::uint64_t baseline_retries = 0;
  for (const auto& r : raw) baseline_retries += r->retries;
  report(name, m, clients,
         fmt::format(",\"isolation\":\"{}\",\"synchronous_commit\":\"on\","
                     "\"conflicts\":{},\"baseline_retries\":{}",
                     cleave::to_string(level), conflicts.load(), baseline_retries));
}

// Up to 32 in-flight commands sharing one transaction (a savepoint each) against one
// transaction per command, both through the bus, at the same concurrency and durability.
// `normal_rate`: a single client's rate without a sync per commit (sqlite_normal_1client, same
// run), the ceiling a group's shared sync reaches toward; reported as ratio_to_normal. 0: none.
void group_commit_case(std::string_view name, cleave::store& db, int clients, std::size_t lanes,
                       std::chrono::milliseconds slice, double normal_rate = 0) {
  db.migrate("bench", schema);
  cleave::group_commit grouped(db, 32, lanes);
  cleave::command_bus plain{&db};
  cleave::command_bus shared{&grouped};
  plain.add(&place<bench::place_item>);
  shared.add(&place<bench::place_item>);
  std::atomic<std::uint64_t> conflicts{0};
  auto send = [&](cleave::command_bus& bus, const char* side, int c, std::uint64_t n) {
    send_or_exit(bus, side, bench::place_item{unique_id(side, c, n), 1}, conflicts);
  };
  auto m = compare(
      clients, 3, slice, [&](int c, std::uint64_t n) { send(shared, "g", c, n); },
      [&](int c, std::uint64_t n) { send(plain, "p", c, n); });
  const double per_group =
      static_cast<double>(grouped.commands_committed()) /
      static_cast<double>(std::max<std::uint64_t>(1, grouped.groups_committed()));
  const std::string to_normal =
      normal_rate > 0 ? fmt::format(",\"ratio_to_normal\":{:.3f}", m.value / normal_rate) : "";
  report(name, m, clients,
         fmt::format(",\"isolation\":\"serializable\",\"max_group\":32,\"lanes\":{},"
                     "\"commands_per_commit\":{:.1f},\"conflicts\":{}{}",
                     lanes, per_group, conflicts.load(), to_normal));
}

// Whether case `name` runs: CLEAVE_BENCH_WRITE_CASES is a comma-separated list of name
// prefixes (empty or unset: every case).
bool wanted(std::string_view name) {
  const char* v = std::getenv("CLEAVE_BENCH_WRITE_CASES");
  if (!v || !*v) return true;
  std::string_view list(v);
  while (!list.empty()) {
    const auto comma = list.find(',');
    const auto prefix = list.substr(0, comma);
    if (!prefix.empty() && name.starts_with(prefix)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  // --quick: short slices, for a smoke run.
  const bool quick = argc > 1 && std::string_view(argv[1]) == "--quick";
  spdlog::set_default_logger(spdlog::stderr_color_mt("bench"));  // stdout is for the JSON lines
  const auto slice = quick ? 200ms : 1500ms;
  std::fprintf(stderr,
               "cleave_bench_write: %s slices of %lld ms, alternating baseline and framework\n",
               quick ? "quick" : "full", static_cast<long long>(slice.count()));
  if (wanted("sqlite_full_1client"))
    sqlite_case("sqlite_full_1client", cleave::sqlite::durability::full, slice);
  const bool group = wanted("sqlite_group_commit_32");
  double normal_rate = 0;
  if (group || wanted("sqlite_normal_1client"))
    normal_rate = sqlite_case("sqlite_normal_1client", cleave::sqlite::durability::normal, slice);
  if (group) {
    const std::string dir = fmt::format("/tmp/cleave-bench-group-{}", ::getpid());
    std::filesystem::remove_all(dir);
    cleave::sqlite::store db{{.path = dir + "/bench.db", .sync = cleave::sqlite::durability::full}};
    group_commit_case("sqlite_group_commit_32", db, 32, 1, slice, normal_rate);
    std::filesystem::remove_all(dir);
  }
  if (const char* url = std::getenv("CLEAVE_BENCH_PG_URL"); url && *url) {
    if (wanted("postgres_append_1client"))
      postgres_append_case("postgres_append_1client", url, 1, slice);
    if (wanted("postgres_append_16clients"))
      postgres_append_case("postgres_append_16clients", url, 16, slice);
    if (wanted("postgres_1client"))
      postgres_case<bench::place_item>("postgres_1client", url, 1, slice);
    if (wanted("postgres_16clients"))
      postgres_case<bench::place_item>("postgres_16clients", url, 16, slice);
    if (wanted("postgres_16clients_read_committed"))
      postgres_case<bench::place_item_read_committed>("postgres_16clients_read_committed", url, 16,
                                                      slice);
    if (wanted("postgres_group_commit_32")) {
      cleave::postgres::store db{{.url = url, .pool_size = 32}};
      group_commit_case("postgres_group_commit_32", db, 32, 1, slice);
    }
  } else {
    std::fprintf(stderr, "CLEAVE_BENCH_PG_URL is not set: skipping the PostgreSQL cases\n");
  }
  return 0;
}
