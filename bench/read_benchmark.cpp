// cleave_bench_read: the read side against set-based SQL and against itself, in one run. One JSON
// line per case on stdout (case, rates, ratio against its baseline); progress on stderr.
//
//   projection_sqlite / projection_postgres   events/s catching up N events (1,000 streams) into a
//       per-stream counter view (a fold: counts summed per batch), against the same view built by
//       one `INSERT … SELECT … GROUP BY`.
//   projection_sqlite_set_based / projection_postgres_set_based   the same view as a set-based
//       projection (batch_sql: one statement per batch over the log's rows).
//   projection_memory   the same into an in-memory view, reading and decoding included, against
//       a raw scan of the log's stream column into a hash map.
//   rebuild_sqlite / rebuild_postgres   a rebuild (shadow table, chunks, swap) against the
//       set-based statement (ratio baseline ÷ value); PostgreSQL also reports REFRESH MATERIALIZED
//       VIEW of the same view.
//   replica_read_your_writes   the wait for at_least(token) on a hot standby (p99), beside the
//       standby's replay lag, against the same read on the primary.
//   lag_inprocess (SQLite) and lag_postgres_crossprocess (projector in another process):
//       commit -> visible in the view at half the maximum command rate; p50/p99 in ms; ratio
//       against Emmett's measured p99 of 1,348 ms.
//   ryw_separate_projector_sqlite / _postgres   16 sessions, each a command then an at_least read
//       of an async view, in a process that does not project (the projector is a child
//       process): the read's p50/p99, against the same with the projector in-process.
//   scale_handler_postgres_{1,2,4}nodes   events/s of a 4-partition handler projection (an
//       upsert per event) caught up by 1, 2 and 4 projector processes sharing its units, and the
//       ratio to one process (CLEAVE_BENCH_SCALE_EVENTS events, default 200,000).
//   rebalance_after_kill_ms   two projector processes share such a view while commands flow;
//       from each kill -9 of one until every unit it held has committed under the other, p50/p99
//       over ten kills.
//
// N is CLEAVE_BENCH_READ_EVENTS (default 1,000,000). PostgreSQL cases run when
// CLEAVE_BENCH_PG_URL names a server, the replica case when CLEAVE_BENCH_PG_STANDBY_URL names its
// standby (make bench starts both). CLEAVE_BENCH_READ_CASES=sqlite,postgres,... runs some groups
// only (sqlite, memory, lag_inprocess, ryw_sqlite, postgres, lag_postgres, ryw_postgres,
// scale_postgres, replica).

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <libpq-fe.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <cleave/cleave.hpp>
#include <cleave/postgres/store.hpp>
#include <cleave/read/consistency.hpp>
#include <cleave/read/projector.hpp>
#include <cleave/sqlite/store.hpp>

#include "bench_messages.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int streams = 1000;
constexpr double emmett_p99_ms = 1348;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// The per-stream counter view kept by a handler per event (one upsert each, a round trip on
// PostgreSQL), in `partitions` units.
cleave::projection handler_counter(const std::string& name, std::uint32_t partitions = 1) {
  cleave::projection p{name};
  p.schema("create table {view}(stream text primary key, n bigint not null)")
      .partitions(partitions)
      .on([](const bench::item_placed& e, cleave::view_context& v) {
        v.exec(
            "insert into {view}(stream, n) values ($1, 1) on conflict(stream) do update set n = "
            "{view}.n + 1",
            e.id);
      });
  return p;
}

// The per-stream counter view, as a fold: the batch's counts summed per stream, then written by
// multi-row upserts of up to 250 streams each (one round trip per statement, not per stream).
cleave::projection counter(const std::string& name) {
  cleave::projection p{name};
  p.schema("create table {view}(stream text primary key, n bigint not null)")
      .fold([](const std::vector<bench::item_placed>& events, cleave::view_context& v) {
        std::unordered_map<std::string, std::int64_t> counts;
        for (const auto& e : events) ++counts[e.id];
        constexpr std::size_t rows_per_statement = 250;
        std::vector<cleave::sql_value> params;
        std::string values;
        auto flush = [&] {
          if (params.empty()) return;
          v.exec_params("insert into {view}(stream, n) values " + values +
                            " on conflict(stream) do update set n = {view}.n + excluded.n",
                        params);
          params.clear();
          values.clear();
        };
        for (const auto& [stream, n] : counts) {
          if (!values.empty()) values += ", ";
          values += fmt::format("(${}, ${})", params.size() + 1, params.size() + 2);
          params.emplace_back(std::string_view(stream));
          params.emplace_back(n);
          if (params.size() == 2 * rows_per_statement) flush();
        }
        flush();
      });
  return p;
}

cleave::result<void> place(const bench::place_item& c, cleave::write_context& tx) {
  tx.emit(c.id, bench::item_placed{c.id, c.quantity});
  return {};
}

// Runs one statement on `db` through a write transaction.
void exec(cleave::store& db, const std::string& sql) {
  cleave::write_scope tx(db, {});
  tx->exec(sql, {});
  tx.commit();
}

std::int64_t scalar(cleave::store& db, const std::string& sql) {
  std::int64_t out = 0;
  cleave::read_scope tx(db, {});
  tx->query(sql, {}, [&](const cleave::row_view& r) { out = std::get<std::int64_t>(r.get(0)); });
  return out;
}

// Appends n events over 1,000 streams with set-based SQL (the log's own format): item_placed,
// or with `one_in` > 1 one item_placed in that many and item_viewed the others.
void seed(cleave::store& db, bool postgres, std::int64_t n, int one_in = 1) {
  const auto t0 = clock_type::now();
  if (postgres)
    exec(db, fmt::format("insert into cleave_events(stream, stream_version, type, payload) "
                         "select 's' || (i % {0}), i / {0} + 1, case when i % {2} = 0 then "
                         "'bench.item_placed' else 'bench.item_viewed' end, "
                         "jsonb_build_object('id', 's' || (i % {0}), 'quantity', 1) "
                         "from generate_series(0, {1} - 1) as i",
                         streams, n, one_in));
  else
    exec(db,
         fmt::format(
             "with recursive i(v) as (select 0 union all select v + 1 from i where v + 1 < {1}) "
             "insert into cleave_events(stream, stream_version, type, payload, recorded_at) "
             "select 's' || (v % {0}), v / {0} + 1, case when v % {2} = 0 then "
             "'bench.item_placed' else 'bench.item_viewed' end, "
             "json_object('id', 's' || (v % {0}), 'quantity', 1), 0 from i",
             streams, n, one_in));
  std::fprintf(stderr, "seeded %lld events in %.1f s\n", static_cast<long long>(n),
               seconds_since(t0));
}

// An empty log on a PostgreSQL cluster that earlier runs may have used: no events, no
// checkpoints, and none of `views`.
void empty_log(cleave::store& db, std::initializer_list<const char*> views) {
  { cleave::projector tables(db); }  // cleave's projector tables, for a fresh cluster
  exec(db, "truncate cleave_events");
  for (const auto* view : views) exec(db, fmt::format("drop table if exists {}", view));
  exec(db, "delete from cleave_checkpoints");
  exec(db, "delete from cleave_migrations where component like 'projection:%'");
}

// What autovacuum does soon after a bulk load (the visibility map, statistics), so that neither
// the baseline nor the projections pay for a first touch of every row. VACUUM cannot run in a
// transaction: its own connection.
void vacuum_log(const std::string& url) {
  PGconn* conn = PQconnectdb(url.c_str());
  PGresult* res = PQexec(conn, "vacuum analyze cleave_events");
  if (PQresultStatus(res) != PGRES_COMMAND_OK)
    std::fprintf(stderr, "vacuum: %s", PQerrorMessage(conn));
  PQclear(res);
  PQfinish(conn);
}

// The median of three timings, `time(0)`, `time(1)` and `time(2)`, in seconds: one run varies by
// ±20% on a busy 2-core machine; baselines and catch-ups alike are measured so.
template <class F>
double median_of_three(F&& time) {
  std::array<double, 3> runs{time(0), time(1), time(2)};
  std::sort(runs.begin(), runs.end());
  return runs[1];
}

// The set-based baseline: the same per-stream counts in one statement; returns seconds.
double set_based(cleave::store& db, const std::string& table) {
  return median_of_three([&](int) {
    exec(db, fmt::format("drop table if exists {}", table));
    exec(db, fmt::format("create table {}(stream text primary key, n bigint not null)", table));
    const auto t0 = clock_type::now();
    exec(db,
         fmt::format("insert into {} select stream, count(*) from cleave_events group by stream",
                     table));
    return seconds_since(t0);
  });
}

// Catches up the projection `make(name)` three times — the first on `first`, then as `name`_1
// and `name`_2 on projectors of their own — and returns the median time.
template <class Make>
double catch_up_three_times(cleave::store& db, cleave::projector& first, const std::string& name,
                            Make&& make) {
  return median_of_three([&](int run) {
    cleave::projector other(db, nullptr, cleave::projector_options{});
    auto& p = run == 0 ? first : other;
    p.add(make(run == 0 ? name : fmt::format("{}_{}", name, run)));
    const auto t0 = clock_type::now();
    p.catch_up();
    return seconds_since(t0);
  });
}

void line(const std::string& json_object) {
  std::printf("%s\n", json_object.c_str());
  std::fflush(stdout);
}

void projection_case(cleave::store& db, const char* backend, std::int64_t n) {
  const double baseline_s = set_based(db, "counts_set_based");
  const cleave::projector_options opts;  // the defaults: batches grow while behind
  cleave::projector p(db, nullptr, opts);
  const double took = catch_up_three_times(db, p, "counts", counter);
  const auto check = scalar(db, "select cast(coalesce(sum(n), 0) as bigint) from counts");
  if (check != n)
    std::fprintf(stderr, "projection_%s: the view counts %lld events, expected %lld\n", backend,
                 static_cast<long long>(check), static_cast<long long>(n));
  // The ceiling of any fold outside the database: reading the log alone
  // (store::read_events_into in batches of max_batch, nothing decoded or written).
  const auto read0 = clock_type::now();
  cleave::position_token at;
  std::vector<cleave::stored_event> events;
  for (;;) {
    at = db.read_events_into(at, opts.max_batch, events, {});
    if (events.empty()) break;
  }
  const double read_only = static_cast<double>(n) / seconds_since(read0);
  const double value = static_cast<double>(n) / took,
               baseline = static_cast<double>(n) / baseline_s;
  line(fmt::format(
      R"({{"bench":"read","case":"projection_{}","unit":"events/s","value":{:.0f},"baseline":{:.0f},"ratio":{:.3f},"events":{},"streams":{},"batch":{},"max_batch":{},"log_read_only":{:.0f},"log_read_only_ratio":{:.3f},"baseline_is":"INSERT … SELECT … GROUP BY"}})",
      backend, value, baseline, value / baseline, n, streams, opts.batch, opts.max_batch, read_only,
      read_only / baseline));

  // The same view as a set-based projection: one statement per batch over the log's rows.
  {
    cleave::projector q(db, nullptr, opts);
    const double set_took = catch_up_three_times(db, q, "counts_sql", [](const std::string& name) {
      cleave::projection sql{name};
      sql.schema("create table {view}(stream text primary key, n bigint not null)")
          .batch_sql(
              "insert into {view}(stream, n) select stream, count(*) from {events} group by "
              "stream on conflict(stream) do update set n = {view}.n + excluded.n");
      return sql;
    });
    if (scalar(db, "select cast(coalesce(sum(n), 0) as bigint) from counts_sql") != n)
      std::fprintf(stderr, "projection_%s_set_based: wrong counts\n", backend);
    const double set_value = static_cast<double>(n) / set_took;
    line(fmt::format(
        R"({{"bench":"read","case":"projection_{}_set_based","unit":"events/s","value":{:.0f},"baseline":{:.0f},"ratio":{:.3f},"events":{},"streams":{},"batch":{},"max_batch":{},"baseline_is":"INSERT … SELECT … GROUP BY","projection_is":"batch_sql: one statement per batch of the log"}})",
        backend, set_value, baseline, set_value / baseline, n, streams, opts.batch,
        opts.max_batch));
    const cleave::rebuild_options ro;  // the defaults: chunks grow as catch-up batches do
    const auto r0 = clock_type::now();
    const auto done = q.rebuild("counts_sql", ro);
    const double rebuild_s = seconds_since(r0);
    if (!done.swapped) std::fprintf(stderr, "rebuild_%s_set_based: not swapped\n", backend);
    line(fmt::format(
        R"({{"bench":"read","case":"rebuild_{}_set_based","unit":"s","value":{:.3f},"baseline":{:.3f},"ratio":{:.3f},"events":{},"max_chunk":{},"baseline_is":"INSERT … SELECT … GROUP BY"}})",
        backend, rebuild_s, baseline_s, baseline_s / rebuild_s, n, opts.max_set_based_batch));
  }

  // Rebuild: shadow, chunks, swap, against the set-based statement (and on PostgreSQL a
  // materialized view's refresh).
  const cleave::rebuild_options ro;
  const auto r0 = clock_type::now();
  const auto done = p.rebuild("counts", ro);
  const double rebuild_s = seconds_since(r0);
  if (!done.swapped) std::fprintf(stderr, "rebuild_%s: not swapped\n", backend);
  std::string extra;
  if (std::string(backend) == "postgres") {
    exec(db, "drop materialized view if exists counts_mv");
    exec(db,
         "create materialized view counts_mv as select stream, count(*) as n from cleave_events "
         "group by stream");
    const auto m0 = clock_type::now();
    exec(db, "refresh materialized view counts_mv");
    extra = fmt::format(R"(,"refresh_materialized_view_s":{:.3f})", seconds_since(m0));
  }
  line(fmt::format(
      R"({{"bench":"read","case":"rebuild_{}","unit":"s","value":{:.3f},"baseline":{:.3f},"ratio":{:.3f},"events":{},"max_chunk":{}{},"baseline_is":"INSERT … SELECT … GROUP BY"}})",
      backend, rebuild_s, baseline_s, baseline_s / rebuild_s, n, opts.max_batch, extra));
}

// On a log of `n` events, one in ten of them item_placed (seed(…, 10)): a fold that handles
// that type catches up reading only it, against the same fold made to read every event (a fold,
// doing nothing, for the other type). And the same view by a handler per event (one upsert
// each), against the fold: what a projection written event by event costs
// (`projection_{}_handler`, events handled per second).
void one_type_in_ten_case(cleave::store& db, const char* backend, std::int64_t n) {
  auto catch_up_with = [&](const std::string& name, cleave::projection projection) {
    cleave::projector p(db);
    p.add(std::move(projection));
    const auto t0 = clock_type::now();
    p.catch_up();
    const double took = seconds_since(t0);
    if (scalar(db, fmt::format("select cast(coalesce(sum(n), 0) as bigint) from {}", name)) !=
        (n + 9) / 10)
      std::fprintf(stderr, "%s: wrong counts\n", name.c_str());
    return took;
  };
  auto reading_all = counter("counts_all_types");
  reading_all.fold([](const std::vector<bench::item_viewed>&, cleave::view_context&) {});
  const double all_s = catch_up_with("counts_all_types", std::move(reading_all));
  const double some_s = catch_up_with("counts_one_type", counter("counts_one_type"));
  const double value = static_cast<double>(n) / some_s, baseline = static_cast<double>(n) / all_s;
  const auto handled = (n + 9) / 10;
  line(fmt::format(
      R"({{"bench":"read","case":"projection_{}_one_type_in_ten","unit":"log events/s","value":{:.0f},"baseline":{:.0f},"ratio":{:.3f},"events":{},"handled":{},"baseline_is":"the same fold reading every event"}})",
      backend, value, baseline, value / baseline, n, handled));
  const double handler_s = catch_up_with("counts_by_handler", handler_counter("counts_by_handler"));
  const double per_s = static_cast<double>(handled) / handler_s,
               fold_per_s = static_cast<double>(handled) / some_s;
  line(fmt::format(
      R"({{"bench":"read","case":"projection_{}_handler","unit":"events/s","value":{:.0f},"baseline":{:.0f},"ratio":{:.3f},"events":{},"baseline_is":"the same view by a fold"}})",
      backend, per_s, fold_per_s, per_s / fold_per_s, handled));
}

void memory_case(cleave::store& db, const std::string& path, std::int64_t n) {
  // Baseline: the raw scan of the stream column into a hash map, no decoding.
  sqlite3* raw = nullptr;
  sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(raw, "select stream from cleave_events order by position", -1, &st, nullptr);
  std::unordered_map<std::string, std::int64_t> scan;
  const auto b0 = clock_type::now();
  while (sqlite3_step(st) == SQLITE_ROW)
    ++scan[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))];
  const double baseline_s = seconds_since(b0);
  sqlite3_finalize(st);
  sqlite3_close(raw);

  using counts = std::unordered_map<std::string, std::int64_t>;
  cleave::memory_view<counts> view{"counts_in_memory"};
  view.on([](const bench::item_placed& e, counts& state) { ++state[e.id]; });
  const cleave::projector_options opts;  // the defaults: batches grow while behind
  cleave::projector p(db, nullptr, opts);
  p.add(view);
  const auto t0 = clock_type::now();
  p.catch_up();
  const double took = seconds_since(t0);
  std::int64_t total = 0;
  view.read([&](const counts& s) {
    for (const auto& [k, v] : s) total += v;
    return 0;
  });
  if (total != n) std::fprintf(stderr, "projection_memory: counted %lld\n", (long long)total);
  const double value = static_cast<double>(n) / took,
               baseline = static_cast<double>(n) / baseline_s;
  line(fmt::format(
      R"({{"bench":"read","case":"projection_memory","unit":"events/s","value":{:.0f},"baseline":{:.0f},"ratio":{:.3f},"events":{},"target":1000000,"baseline_is":"raw sqlite3 scan of the stream column into a hash map, no decoding"}})",
      value, baseline, value / baseline, n));
}

// Commit -> visible, at half the maximum command rate. `visible_at(token)` blocks until the
// view has the token (or 10 s pass).
struct lag_result {
  double max_rate = 0, rate = 0, p50 = 0, p99 = 0;
  std::size_t samples = 0;
};

template <class Visible>
lag_result measure_lag(cleave::command_bus& commands, Visible&& visible_at, double seconds) {
  lag_result out;
  std::uint64_t k = 0;
  auto send = [&] {
    auto r = commands.send(bench::place_item{fmt::format("s{}", k++ % streams), 1});
    if (!r) std::fprintf(stderr, "send: %s\n", r.error().describe().c_str());
    return r ? r->position : cleave::position_token{};
  };
  // The maximum rate, one client back to back.
  const auto m0 = clock_type::now();
  std::uint64_t sent = 0;
  while (seconds_since(m0) < 1.0) {
    send();
    ++sent;
  }
  out.max_rate = static_cast<double>(sent) / seconds_since(m0);
  const double rate = out.max_rate / 2;
  // Paced commands; an observer times each one's visibility.
  std::mutex m;
  std::deque<std::pair<cleave::position_token, clock_type::time_point>> pending;
  std::atomic<bool> done{false};
  std::vector<double> lags;
  std::thread observer([&] {
    for (;;) {
      std::pair<cleave::position_token, clock_type::time_point> next;
      {
        std::lock_guard lock(m);
        if (pending.empty()) {
          if (done) return;
        } else {
          next = pending.front();
          pending.pop_front();
        }
      }
      if (next.first.empty()) {
        std::this_thread::sleep_for(50us);
        continue;
      }
      visible_at(next.first);
      const auto now = clock_type::now();
      lags.push_back(std::chrono::duration<double, std::milli>(now - next.second).count());
      // Everything committed before and already visible counts at the same instant.
    }
  });
  const auto t0 = clock_type::now();
  const auto interval = std::chrono::duration<double>(1.0 / rate);
  std::uint64_t n = 0;
  while (seconds_since(t0) < seconds) {
    const auto due = t0 + std::chrono::duration_cast<clock_type::duration>(interval * n);
    std::this_thread::sleep_until(due);
    const auto position = send();
    const auto committed = clock_type::now();
    {
      std::lock_guard lock(m);
      pending.emplace_back(position, committed);
    }
    ++n;
  }
  out.rate = static_cast<double>(n) / seconds_since(t0);
  done = true;
  observer.join();
  std::sort(lags.begin(), lags.end());
  out.samples = lags.size();
  if (!lags.empty()) {
    out.p50 = lags[lags.size() / 2];
    out.p99 = lags[std::min(lags.size() - 1, lags.size() * 99 / 100)];
  }
  return out;
}

// `extra`: more members for the line, each starting with a comma.
void lag_line(const char* name, const lag_result& r, const char* projector_is,
              const std::string& extra = "") {
  line(fmt::format(
      R"({{"bench":"read","case":"{}","unit":"ms","value":{:.3f},"baseline":{},"ratio":{:.1f},"p50_ms":{:.3f},"p99_ms":{:.3f},"samples":{},"commands_per_s":{:.0f},"max_commands_per_s":{:.0f},"projector":"{}"{},"baseline_is":"Emmett's measured p99"}})",
      name, r.p99, emmett_p99_ms, emmett_p99_ms / std::max(r.p99, 1e-3), r.p50, r.p99, r.samples,
      r.rate, r.max_rate, projector_is, extra));
}

void lag_inprocess(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
  cleave::sqlite::store db({.path = path, .sync = cleave::sqlite::durability::normal});
  cleave::projector p(db);
  p.add(counter("lag_counts"));
  cleave::command_bus commands{&p.source()};
  commands.add(place);
  p.start();
  // The WAL file's size through the run (its high-water mark: checkpoints copy it back, and the
  // next write starts it over, without shrinking the file).
  std::vector<std::uintmax_t> wal_sizes;
  std::atomic<bool> measuring{true};
  std::thread sampler([&] {
    while (measuring) {
      std::error_code ec;
      wal_sizes.push_back(std::filesystem::file_size(path + "-wal", ec));
      std::this_thread::sleep_for(500ms);
    }
  });
  auto r = measure_lag(
      commands,
      [&](cleave::position_token t) { p.wait_for("lag_counts", t, cleave::clock::now() + 10s); },
      3.0);
  measuring = false;
  sampler.join();
  p.stop();
  lag_line(
      "lag_inprocess", r, "worker thread in the writing process (SQLite, synchronous=NORMAL)",
      fmt::format(R"(,"wal_max_bytes":{},"wal_bytes_every_500ms":[{}])",
                  wal_sizes.empty() ? 0 : *std::max_element(wal_sizes.begin(), wal_sizes.end()),
                  fmt::join(wal_sizes, ",")));
}

// A store on `database`: a postgresql:// URL, else a SQLite file (synchronous=NORMAL).
std::unique_ptr<cleave::store> open_store(const std::string& database, std::size_t pool = 8) {
  if (database.starts_with("postgresql://") || database.starts_with("postgres://"))
    return std::make_unique<cleave::postgres::store>(
        cleave::postgres::options{.url = database, .pool_size = pool});
  return std::make_unique<cleave::sqlite::store>(
      cleave::sqlite::options{.path = database, .sync = cleave::sqlite::durability::normal});
}

// The child process of the cross-process cases: projects the counter view `view` on `database`
// until SIGTERM.
int project_until_terminated(const std::string& database, const std::string& view) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  auto db = open_store(database);
  cleave::projector p(*db);
  p.add(counter(view));
  p.start();
  int sig = 0;
  sigwait(&set, &sig);
  p.stop();
  return 0;
}

// Starts a child process (this executable) projecting `view` on `database`; gives it a second to
// connect and take the lease.
pid_t start_projector_process(const char* self, const std::string& database,
                              const std::string& view) {
  const pid_t child = fork();
  if (child == 0) {
    execl(self, self, "--project", database.c_str(), view.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  std::this_thread::sleep_for(1s);
  return child;
}

void stop_process(pid_t child) {
  kill(child, SIGTERM);
  waitpid(child, nullptr, 0);
}

// Drops the counter view `view` of earlier runs and registers it anew, starting at the log's
// head (so that nothing seeded before is caught up).
void fresh_view_at_head(cleave::store& db, const std::string& view) {
  cleave::projector setup(db);  // (makes cleave's projector tables in a fresh database)
  exec(db, fmt::format("drop table if exists {}", view));
  exec(db, fmt::format("delete from cleave_migrations where component = 'projection:{}'", view));
  exec(db, fmt::format("delete from cleave_checkpoints where name = '{}'", view));
  setup.add(counter(view));
  const auto head = db.head();
  exec(db, fmt::format("update cleave_checkpoints set transaction_id = {}, position = {} where "
                       "name = '{}'",
                       head.transaction(), head.position(), view));
}

void lag_postgres_crossprocess(const std::string& url, const char* self) {
  cleave::postgres::store db({.url = url});
  fresh_view_at_head(db, "lag_counts");
  const pid_t child = start_projector_process(self, url, "lag_counts");
  cleave::command_bus commands{&db};
  commands.add(place);
  // Watching from this process: the view's checkpoint, read on a connection of its own.
  PGconn* watch = PQconnectdb(url.c_str());
  auto r = measure_lag(
      commands,
      [&](cleave::position_token t) {
        const auto until = clock_type::now() + 10s;
        while (clock_type::now() < until) {
          PGresult* res = PQexec(watch,
                                 "select transaction_id, position from cleave_checkpoints where "
                                 "name = 'lag_counts'");
          const auto at = cleave::position_token(std::strtoull(PQgetvalue(res, 0, 0), nullptr, 10),
                                                 std::strtoull(PQgetvalue(res, 0, 1), nullptr, 10));
          PQclear(res);
          if (!(at < t)) return;
          std::this_thread::sleep_for(100us);
        }
      },
      3.0);
  PQfinish(watch);
  stop_process(child);
  lag_line("lag_postgres_crossprocess", r,
           "another process, woken by NOTIFY after commit; checkpoint polled every 0.1 ms");
}

struct item_quantity {
  std::string id;
  using response = std::int64_t;
};
CLEAVE_QUERY(item_quantity, "bench.item_quantity", id)

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(static_cast<double>(v.size()) * p))];
}

// Read-your-writes on a hot standby: each command's row read back with at_least(token), served
// by the standby once it has replayed the commit; against the same read on the primary.
void replica_read_your_writes(const std::string& url, const std::string& standby) {
  cleave::postgres::options o{.url = url};
  o.replicas = {standby};
  o.replica_fallback_to_primary = false;
  cleave::postgres::store db(o);
  exec(db, "drop table if exists ryw_items");
  exec(db, "create table ryw_items(id text primary key, quantity bigint not null)");
  cleave::command_bus commands{&db};
  commands.add([](const bench::place_item& c, cleave::write_context& tx) -> cleave::result<void> {
    tx.exec("insert into ryw_items(id, quantity) values ($1, $2)", c.id, c.quantity);
    tx.emit(c.id, bench::item_placed{c.id, c.quantity});
    return {};
  });
  cleave::query_bus queries{&db};
  queries.add([](const item_quantity& q, const cleave::read_context& r) {
    return r.one<std::int64_t>("select quantity from ryw_items where id = $1", q.id);
  });
  std::this_thread::sleep_for(200ms);  // the standby replays the new table
  std::vector<double> on_standby, on_primary, replay_lag;
  const auto t0 = clock_type::now();
  for (int i = 0; seconds_since(t0) < 5.0; ++i) {
    const auto id = fmt::format("r{}", i);
    auto done = commands.send(bench::place_item{id, 1});
    if (!done) continue;
    cleave::request_meta meta;
    meta.consistency = cleave::at_least(done->position);
    auto a = clock_type::now();
    auto seen = queries.ask(item_quantity{id}, meta);
    on_standby.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - a).count());
    if (!seen) std::fprintf(stderr, "replica read: %s\n", seen.error().describe().c_str());
    cleave::request_meta strong;
    strong.consistency = cleave::strong();
    a = clock_type::now();
    (void)queries.ask(item_quantity{id}, strong);
    on_primary.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - a).count());
    if (i % 10 == 0) replay_lag.push_back(db.replicas().at(0).lag_seconds * 1000);
  }
  const auto served = db.replicas().at(0).reads;
  const double p99 = percentile(on_standby, 0.99), base = percentile(on_primary, 0.99);
  line(fmt::format(
      R"({{"bench":"read","case":"replica_read_your_writes","unit":"ms","value":{:.3f},"baseline":{:.3f},"ratio":{:.3f},"p50_ms":{:.3f},"p99_ms":{:.3f},"replay_lag_p50_ms":{:.3f},"replay_lag_p99_ms":{:.3f},"reads":{},"served_by_standby":{},"baseline_is":"the same read on the primary (strong), p99"}})",
      p99, base, base / std::max(p99, 1e-3), percentile(on_standby, 0.5), p99,
      percentile(replay_lag, 0.5), percentile(replay_lag, 0.99), on_standby.size(), served));
}

struct ryw_count {
  std::string stream;
  using response = std::int64_t;
};
CLEAVE_QUERY(ryw_count, "bench.ryw_count", stream)

// Read-your-writes, 16 sessions for `seconds`: each sends a command, then reads the counter view
// `ryw_counts` at_least its token through `queries` (read_your_writes). Returns each read's
// latency in ms, but each session's first; counts the reads that failed in `errors`.
std::vector<double> ryw_sessions(cleave::command_bus& commands, cleave::query_bus& queries,
                                 double seconds, std::size_t& errors) {
  constexpr int sessions = 16;
  std::vector<std::vector<double>> latencies(sessions);
  std::atomic<std::size_t> failed{0};
  std::vector<std::thread> threads;
  const auto t0 = clock_type::now();
  for (int i = 0; i < sessions; ++i)
    threads.emplace_back([&, i] {
      const std::string stream = fmt::format("ryw{}", i);
      for (bool warm_up = true; seconds_since(t0) < seconds; warm_up = false) {
        auto done = commands.send(bench::place_item{stream, 1});
        if (!done) {
          ++failed;
          continue;
        }
        cleave::request_meta meta;
        meta.consistency = cleave::at_least(done->position);
        meta.deadline = cleave::clock::now() + 10s;
        const auto a = clock_type::now();
        auto seen = queries.ask(ryw_count{stream}, meta);
        if (!warm_up)  // (the first wait of a process makes its progress watch: a connection)
          latencies[i].push_back(
              std::chrono::duration<double, std::milli>(clock_type::now() - a).count());
        if (!seen) {
          if (failed++ == 0)
            std::fprintf(stderr, "ryw read: %s\n", seen.error().describe().c_str());
        }
      }
    });
  for (auto& t : threads) t.join();
  errors = failed;
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  return all;
}

// The reads of ryw_sessions on `db`, with `p` (not started here) as the read side's projector.
std::vector<double> ryw_reads(cleave::store& db, cleave::projector& p, std::size_t& errors) {
  cleave::command_bus commands{&p.source()};
  commands.add(place);
  cleave::query_bus queries{&db};
  queries.use<cleave::read_your_writes>(p).reads("bench.ryw_count", {"ryw_counts"});
  queries.add(
      [](const ryw_count& q, const cleave::read_context& r) -> cleave::result<std::int64_t> {
        auto n = r.one<std::int64_t>("select n from ryw_counts where stream = $1", q.stream);
        if (!n && n.error().category == cleave::errc::not_found) return 0;
        return n;
      });
  return ryw_sessions(commands, queries, 3.0, errors);
}

// ryw_separate_projector_<backend>: read-your-writes by 16 sessions in a process that does not
// project — the projector runs in a child process — against the same with the projector in the
// process (the baseline). `database` is a SQLite file or a PostgreSQL URL.
void ryw_separate_projector(const std::string& database, const char* backend, const char* self) {
  constexpr std::size_t pool = 24;  // a connection per session: the wait is measured, not the pool
  std::size_t inprocess_errors = 0, separate_errors = 0;
  std::vector<double> inprocess, separate;
  {
    auto db = open_store(database, pool);
    fresh_view_at_head(*db, "ryw_counts");
    cleave::projector p(*db);
    p.add(counter("ryw_counts"));
    p.start();
    inprocess = ryw_reads(*db, p, inprocess_errors);
    p.stop();
  }
  {
    auto db = open_store(database, pool);
    cleave::projector p(*db);  // never started: the child process leads
    p.add(counter("ryw_counts"));
    const pid_t child = start_projector_process(self, database, "ryw_counts");
    separate = ryw_reads(*db, p, separate_errors);
    stop_process(child);
  }
  const double p99 = percentile(separate, 0.99), base = percentile(inprocess, 0.99);
  line(fmt::format(
      R"({{"bench":"read","case":"ryw_separate_projector_{}","unit":"ms","value":{:.3f},"baseline":{:.3f},"ratio":{:.3f},"p50_ms":{:.3f},"p99_ms":{:.3f},"baseline_p50_ms":{:.3f},"baseline_p99_ms":{:.3f},"reads":{},"errors":{},"baseline_reads":{},"baseline_errors":{},"sessions":16,"projector":"another process, woken by the store's commit watch; readers woken by its progress announcements","baseline_is":"the same with the projector in the serving process, p99"}})",
      backend, p99, base, base / std::max(p99, 1e-3), percentile(separate, 0.5), p99,
      percentile(inprocess, 0.5), base, separate.size(), separate_errors, inprocess.size(),
      inprocess_errors));
}

// Sends `place` commands from 8 clients until `done()` says stop (asked between commands);
// returns commands/s.
template <class Done>
double write_rate(cleave::command_bus& commands, Done&& done) {
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> sent{0};
  std::vector<std::thread> clients;
  const auto t0 = clock_type::now();
  for (int c = 0; c < 8; ++c)
    clients.emplace_back([&, c] {
      for (int i = 0; !stop; ++i)
        if (commands.send(bench::place_item{fmt::format("s{}", (c * 7919 + i) % streams), 1}))
          ++sent;
    });
  while (!done()) std::this_thread::sleep_for(5ms);
  stop = true;
  for (auto& t : clients) t.join();
  return static_cast<double>(sent.load()) / seconds_since(t0);
}

// A changed projection (version 2 of the counter view) built beside the live one and swapped in
// (the upgrade a worker runs, here on its own thread) while 8 clients write; against the write
// rate without it, same run. swap_ms: how long the swap's transaction held the view's table
// (what a read of the view can wait at most); read_max_ms: the longest read of the view seen
// meanwhile, which includes the machine's own jitter under the load.
void blue_green_rebuild_postgres(const std::string& url, std::int64_t n) {
  cleave::postgres::store db({.url = url, .pool_size = 12});
  empty_log(db, {"counts_bg"});
  exec(db, "delete from cleave_rebuilds");
  seed(db, true, n);
  vacuum_log(url);
  double baseline = 0;
  {
    cleave::projector release1(db);
    release1.add(counter("counts_bg"));
    release1.catch_up();
    cleave::command_bus commands{&release1.source()};
    commands.add(place);
    release1.start();
    const auto until = clock_type::now() + 3s;
    baseline = write_rate(commands, [&] { return clock_type::now() >= until; });
    release1.stop();
  }
  cleave::projector release2(db);
  release2.add(counter("counts_bg").version(2));
  cleave::command_bus commands{&release2.source()};
  commands.add(place);
  std::atomic<bool> reading{true};
  double longest_read_ms = 0;
  std::thread reader([&] {
    while (reading) {
      const auto t0 = clock_type::now();
      scalar(db, "select count(*) from counts_bg");
      longest_read_ms = std::max(longest_read_ms, seconds_since(t0) * 1000);
      std::this_thread::sleep_for(1ms);
    }
  });
  const auto t0 = clock_type::now();
  std::atomic<bool> upgraded{false};
  cleave::rebuild_progress upgrade;
  std::thread upgrading([&] {
    upgrade = release2.rebuild("counts_bg");
    upgraded = true;
  });
  const double during = write_rate(commands, [&] { return upgraded.load(); });
  const double rebuild_s = seconds_since(t0);
  upgrading.join();
  reading = false;
  reader.join();
  const bool swapped = upgrade.swapped && !release2.status("counts_bg").upgrading;
  line(fmt::format(
      R"({{"bench":"read","case":"blue_green_rebuild_postgres","unit":"commands/s","value":{:.0f},"baseline":{:.0f},"ratio":{:.3f},"target":0.7,"swap_ms":{:.1f},"swap_ms_target":100,"read_max_ms":{:.1f},"rebuild_s":{:.2f},"swapped":{},"events":{},"clients":8,"baseline_is":"the same 8 clients writing without the rebuild","swap_ms_is":"how long the swap's transaction held the view's table","read_max_ms_is":"the longest read of the view while it was rebuilt and swapped"}})",
      during, baseline, during / baseline, upgrade.swap_ms, longest_read_ms, rebuild_s,
      swapped ? "true" : "false", n));
}

// Whether CLEAVE_BENCH_READ_CASES (a comma-separated list of group names; empty or unset: all)
// asks for `group`: sqlite, lag_inprocess, ryw_sqlite, postgres, blue_green_postgres,
// lag_postgres, ryw_postgres, replica.
// The child process of the scale cases: projector process `node` sharing the units of the
// 4-partition handler view `view` on `database` with the others.
int share_until_terminated(const std::string& database, const std::string& view,
                           const std::string& node) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  auto db = open_store(database);
  cleave::projector_options opts;
  opts.node = node;
  cleave::projector p(*db, nullptr, opts);
  p.add(handler_counter(view, 4));
  p.start();
  int sig = 0;
  sigwait(&set, &sig);
  p.stop();
  return 0;
}

pid_t start_share_process(const char* self, const std::string& database, const std::string& view,
                          const std::string& node) {
  const pid_t child = fork();
  if (child == 0) {
    execl(self, self, "--share", database.c_str(), view.c_str(), node.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  return child;
}

// Drops the view `view` of earlier runs, its checkpoints and its units'.
void drop_view(cleave::store& db, const std::string& view) {
  cleave::projector setup(db);  // (makes cleave's projector tables in a fresh database)
  exec(db, fmt::format("drop table if exists {}", view));
  exec(db, fmt::format("delete from cleave_migrations where component = 'projection:{}'", view));
  exec(db,
       fmt::format("delete from cleave_checkpoints where name = '{0}' or name like '{0}#%'", view));
  exec(db, "delete from cleave_projector_nodes");
}

// The machine's CPU time so far, busy and in all (jiffies, from /proc/stat's first line).
std::pair<double, double> cpu_jiffies() {
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return {0, 0};
  unsigned long long v[8] = {};
  const int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                            &v[3], &v[4], &v[5], &v[6], &v[7]);
  std::fclose(f);
  if (n < 5) return {0, 0};
  double total = 0;
  for (const auto x : v) total += static_cast<double>(x);
  const double idle = static_cast<double>(v[3] + v[4]);  // idle, iowait
  return {total - idle, total};
}

// The 4-partition handler view caught up from the log's beginning by 1, 2 and 4 projector
// processes sharing its units: events/s each, the ratio to one process, and how busy the
// machine's CPUs were meanwhile (`cpu_busy`: where the time goes — round trips leave them idle,
// work does not).
void scale_handler_postgres(const std::string& url, const char* self, std::int64_t n) {
  cleave::postgres::store db({.url = url});
  const std::string view = "scale_counts";
  double one_node = 0;
  for (const int nodes : {1, 2, 4}) {
    drop_view(db, view);
    cleave::projector reader(db);
    reader.add(handler_counter(view, 4));
    const auto head = db.head();
    std::vector<pid_t> children;
    const auto cpu0 = cpu_jiffies();
    const auto t0 = clock_type::now();
    for (int i = 0; i < nodes; ++i)
      children.push_back(start_share_process(self, url, view, fmt::format("n{}", i)));
    while (reader.checkpoint(view) < head && seconds_since(t0) < 600)
      std::this_thread::sleep_for(10ms);
    const double took = seconds_since(t0);
    const auto cpu1 = cpu_jiffies();
    const double busy =
        cpu1.second > cpu0.second ? (cpu1.first - cpu0.first) / (cpu1.second - cpu0.second) : 0;
    for (const auto child : children) stop_process(child);
    if (scalar(db, fmt::format("select cast(coalesce(sum(n), 0) as bigint) from {}", view)) != n)
      std::fprintf(stderr, "scale_handler_postgres_%dnodes: wrong counts\n", nodes);
    const double value = static_cast<double>(n) / took;
    if (nodes == 1) one_node = value;
    line(fmt::format(
        R"({{"bench":"read","case":"scale_handler_postgres_{}nodes","unit":"events/s","value":{:.0f},"baseline":{:.0f},"ratio":{:.3f},"events":{},"partitions":4,"nodes":{},"cpu_busy":{:.2f},"cpus":{},"baseline_is":"the same with one projector process, its start included"}})",
        nodes, value, one_node, value / one_node, n, nodes, busy,
        std::thread::hardware_concurrency()));
  }
}

// Two projector processes share a 4-partition handler view while commands flow; one is killed
// (SIGKILL) ten times: the time from each kill until every unit it held has committed a batch
// under another process, p50/p99.
void rebalance_after_kill(const std::string& url, const char* self) {
  cleave::postgres::store db({.url = url});
  const std::string view = "rebalance_counts";
  drop_view(db, view);
  {
    cleave::projector setup(db);
    setup.add(handler_counter(view, 4));
    const auto head = db.head();
    exec(db, fmt::format("update cleave_checkpoints set transaction_id = {}, position = {} where "
                         "name like '{}%'",
                         head.transaction(), head.position(), view));
  }
  std::atomic<bool> writing{true};
  std::thread writer([&] {  // about 1,000 commands/s over 100 streams
    cleave::command_bus commands{&db};
    commands.add(place);
    for (int i = 0; writing; ++i) {
      (void)commands.send(bench::place_item{fmt::format("r{}", i % 100), 1});
      std::this_thread::sleep_for(1ms);
    }
  });
  struct unit_state {
    std::string owner;
    std::int64_t position = 0;
  };
  const auto units = [&] {
    std::map<std::string, unit_state> out;
    cleave::read_scope tx(db, {});
    tx->query(fmt::format("select name, case when lease_until_ms > (extract(epoch from "
                          "clock_timestamp()) * 1000) then coalesce(owner, '') else '' end, "
                          "position from cleave_checkpoints where name like '{}#%'",
                          view),
              {}, [&](const cleave::row_view& r) {
                out[std::string(std::get<std::string_view>(r.get(0)))] = {
                    std::string(std::get<std::string_view>(r.get(1))),
                    std::get<std::int64_t>(r.get(2))};
              });
    return out;
  };
  std::array<std::string, 2> names{"a0", "b0"};
  std::array<pid_t, 2> children{start_share_process(self, url, view, names[0]),
                                start_share_process(self, url, view, names[1])};
  const auto even = [&] {
    std::map<std::string, int> held;
    for (const auto& [unit, s] : units()) ++held[s.owner];
    return held[names[0]] == 2 && held[names[1]] == 2;
  };
  std::vector<double> ms;
  for (int kill_no = 0; kill_no < 10; ++kill_no) {
    const auto settle = clock_type::now();
    while (!even() && seconds_since(settle) < 30) std::this_thread::sleep_for(10ms);
    const int victim = kill_no % 2;
    const auto before = units();
    kill(children[victim], SIGKILL);
    const auto t0 = clock_type::now();
    waitpid(children[victim], nullptr, 0);
    std::map<std::string, std::int64_t> orphaned;  // its units, and where they stood
    for (const auto& [unit, s] : before)
      if (s.owner == names[victim]) orphaned[unit] = s.position;
    while (seconds_since(t0) < 30) {
      const auto now = units();
      const bool all_moved = std::all_of(orphaned.begin(), orphaned.end(), [&](const auto& u) {
        const auto& s = now.at(u.first);
        return s.owner == names[1 - victim] && s.position > u.second;
      });
      if (all_moved) break;
      std::this_thread::sleep_for(2ms);
    }
    ms.push_back(seconds_since(t0) * 1000);
    names[victim] += "'";
    children[victim] = start_share_process(self, url, view, names[victim]);
  }
  writing = false;
  writer.join();
  for (const auto child : children) stop_process(child);
  line(fmt::format(
      R"({{"bench":"read","case":"rebalance_after_kill_ms","unit":"ms","p50":{:.0f},"p99":{:.0f},"kills":{},"unit_lease_ms":{},"partitions":4,"nodes":2,"target_p99_ms":2000,"measures":"kill -9 of a projector process until each unit it held has committed a batch under the other"}})",
      percentile(ms, 0.5), percentile(ms, 0.99), ms.size(),
      cleave::projector_options{}.unit_lease.count()));
}

bool wanted(std::string_view group) {
  const char* v = std::getenv("CLEAVE_BENCH_READ_CASES");
  if (!v || !*v) return true;
  const std::string list = std::string(",") + v + ",";
  return list.find(fmt::format(",{},", group)) != std::string::npos;
}

}  // namespace

int main(int argc, char** argv) {
  // JSON lines alone on stdout; logs on stderr.
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "cleave", std::make_shared<spdlog::sinks::stderr_color_sink_mt>()));
  if (argc == 4 && std::string(argv[1]) == "--project")
    return project_until_terminated(argv[2], argv[3]);
  if (argc == 5 && std::string(argv[1]) == "--share")
    return share_until_terminated(argv[2], argv[3], argv[4]);
  std::int64_t n = 1'000'000;
  if (const char* v = std::getenv("CLEAVE_BENCH_READ_EVENTS"); v && *v) n = std::atoll(v);
  const auto dir =
      std::filesystem::temp_directory_path() / fmt::format("cleave-bench-read-{}", getpid());
  std::filesystem::create_directories(dir);
  try {
    if (wanted("sqlite") || wanted("memory")) {
      const auto path = (dir / "log.db").string();
      cleave::sqlite::store db({.path = path, .sync = cleave::sqlite::durability::normal});
      seed(db, false, n);
      if (wanted("sqlite")) projection_case(db, "sqlite", n);
      memory_case(db, path, n);
    }
    if (wanted("sqlite_types")) {
      cleave::sqlite::store db(
          {.path = (dir / "types.db").string(), .sync = cleave::sqlite::durability::normal});
      seed(db, false, n, 10);
      one_type_in_ten_case(db, "sqlite", n);
    }
    if (wanted("lag_inprocess")) lag_inprocess((dir / "lag.db").string());
    if (wanted("ryw_sqlite")) ryw_separate_projector((dir / "ryw.db").string(), "sqlite", argv[0]);
    if (const char* url = std::getenv("CLEAVE_BENCH_PG_URL"); url && *url) {
      if (wanted("postgres")) {
        cleave::postgres::store db({.url = url});
        empty_log(db, {"counts", "counts_1", "counts_2", "counts_sql", "counts_sql_1",
                       "counts_sql_2", "counts_set_based"});
        seed(db, true, n);
        vacuum_log(url);
        projection_case(db, "postgres", n);
      }
      if (wanted("postgres_types")) {
        cleave::postgres::store db({.url = url});
        empty_log(db, {"counts_all_types", "counts_one_type", "counts_by_handler"});
        seed(db, true, n, 10);
        vacuum_log(url);
        one_type_in_ten_case(db, "postgres", n);
      }
      if (wanted("blue_green_postgres")) blue_green_rebuild_postgres(url, n);
      if (wanted("scale_postgres")) {
        // A log of its own size: a handler projection takes a round trip per event.
        std::int64_t scale_n = 200'000;
        if (const char* v = std::getenv("CLEAVE_BENCH_SCALE_EVENTS"); v && *v)
          scale_n = std::atoll(v);
        cleave::postgres::store db({.url = url});
        empty_log(db, {"scale_counts"});
        seed(db, true, scale_n);
        vacuum_log(url);
        scale_handler_postgres(url, argv[0], scale_n);
        rebalance_after_kill(url, argv[0]);
      }
      if (wanted("lag_postgres")) lag_postgres_crossprocess(url, argv[0]);
      if (wanted("ryw_postgres")) ryw_separate_projector(url, "postgres", argv[0]);
      if (const char* standby = std::getenv("CLEAVE_BENCH_PG_STANDBY_URL"); standby && *standby) {
        if (wanted("replica")) replica_read_your_writes(url, standby);
      } else
        std::fprintf(stderr, "CLEAVE_BENCH_PG_STANDBY_URL is not set: skipping the replica case\n");
    } else {
      std::fprintf(stderr, "CLEAVE_BENCH_PG_URL is not set: skipping the PostgreSQL cases\n");
    }
  } catch (const cleave::error_exception& e) {
    std::fprintf(stderr, "cleave_bench_read: %s\n", e.error().describe().c_str());
    std::filesystem::remove_all(dir);
    return 1;
  }
  std::filesystem::remove_all(dir);
  return 0;
}
