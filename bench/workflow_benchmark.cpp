// cleave_bench_workflow: workflows against what a user would write by hand, in one run. One JSON
// line per case on stdout; progress on stderr.
//
//   workflow_process_manager_sqlite   events/s through a process manager that sends one command
//       per event (the manager's batch stores the sends, the scheduler sends each with its id),
//       against the same commands sent directly in a loop, with command ids as well.
//   workflow_schedule_lateness   commands scheduled 1,000 per second, sent by the projector's
//       worker as they come due: p50/p99 ms from due time to the command's commit, against a
//       thread that sleeps until each due time and sends the same command itself.
//
// N is CLEAVE_BENCH_WORKFLOW_EVENTS (default 20,000); SQLite files in a temporary folder.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cleave/cleave.hpp>
#include <cleave/read/projector.hpp>
#include <cleave/sqlite/store.hpp>
#include <cleave/workflow/process_manager.hpp>
#include <cleave/workflow/scheduler.hpp>

namespace {

using steady = std::chrono::steady_clock;

struct bump {
  std::string id;
};
CLEAVE_COMMAND(bump, "bench.bump", id)
struct pinged {
  std::string id;
};
CLEAVE_EVENT(pinged, "bench.pinged", id)
struct record {
  std::int64_t n = 0;
  std::int64_t due_ms = 0;
};
CLEAVE_COMMAND(record, "bench.record", n, due_ms)
struct nothing {
  std::int64_t seen = 0;
};
CLEAVE_RECORD(nothing, seen)

constexpr cleave::migration schema[] = {
    {1, "bench",
     "create table counters(id text primary key, n bigint not null);"
     "create table lateness(n bigint primary key, due_ms bigint not null, done_us bigint not "
     "null)"}};

cleave::result<void> on_bump(const bump& c, cleave::write_context& tx) {
  tx.exec(
      "insert into counters(id, n) values ($1, 1) on conflict(id) do update set n = counters.n + "
      "1",
      c.id);
  return {};
}

cleave::result<void> on_record(const record& c, cleave::write_context& tx) {
  const auto now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  tx.exec("insert into lateness(n, due_ms, done_us) values ($1, $2, $3)", c.n, c.due_ms, now_us);
  return {};
}

std::int64_t scalar(cleave::store& db, std::string_view sql) {
  cleave::read_scope tx(db, cleave::detail::no_meta, cleave::strong());
  cleave::read_context ctx(&*tx, cleave::detail::no_meta);
  return ctx.one<std::int64_t>(sql).value_or(-1);
}

struct setup {
  std::unique_ptr<cleave::sqlite::store> db;
  std::unique_ptr<cleave::projector> projector;
  cleave::command_bus commands;
  std::unique_ptr<cleave::scheduler> scheduler;

  explicit setup(const std::filesystem::path& file)
      : db(std::make_unique<cleave::sqlite::store>(cleave::sqlite::options{.path = file.string()})),
        projector(std::make_unique<cleave::projector>(*db)),
        commands(&projector->source()) {
    db->migrate("bench", schema);
    commands.add(on_bump);
    commands.add(on_record);
    scheduler = std::make_unique<cleave::scheduler>(
        *db, [this](std::string_view wire, const cleave::json& payload,
                    const cleave::request_meta& meta) {
          return commands.send_json(wire, payload, meta);
        });
    projector->add_leader_task([s = scheduler.get()] { return s->run_due(); });
  }
};

void process_manager_case(const std::filesystem::path& dir, std::int64_t n) {
  double direct_rate = 0;
  {
    setup s(dir / "direct.db");
    const auto start = steady::now();
    for (std::int64_t i = 0; i < n; ++i) {
      cleave::request_meta meta;
      meta.command_id = fmt::format("direct#{}", i);
      (void)s.commands.send(bump{fmt::format("c{}", i % 100)}, meta);
    }
    direct_rate =
        static_cast<double>(n) / std::chrono::duration<double>(steady::now() - start).count();
  }
  setup s(dir / "managed.db");
  cleave::process_manager<nothing> relay{"relay"};
  relay.on(&pinged::id, [](const pinged& e, nothing& st, cleave::process_context& p) {
    ++st.seen;
    p.send(bump{e.id});
  });
  s.projector->add(relay.as_projection());
  {
    cleave::write_scope tx(*s.db, cleave::detail::no_meta);
    cleave::write_context ctx(&*tx, cleave::detail::no_meta);
    for (std::int64_t i = 0; i < n; ++i) ctx.emit(pinged{fmt::format("c{}", i % 100)});
    tx.commit();
  }
  const auto start = steady::now();
  while (scalar(*s.db, "select coalesce(sum(n), 0) from counters") < n) s.projector->catch_up();
  const double managed_rate =
      static_cast<double>(n) / std::chrono::duration<double>(steady::now() - start).count();
  fmt::print(
      R"({{"bench":"workflow","case":"workflow_process_manager_sqlite","unit":"events/s","value":{:.0f},"baseline":{:.0f},"ratio":{:.3f},"events":{},"target_ratio":0.5,"baseline_is":"the same commands sent directly in a loop, each with a command id"}})"
      "\n",
      managed_rate, direct_rate, managed_rate / direct_rate, n);
  std::fflush(stdout);
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

void lateness_case(const std::filesystem::path& dir) {
  constexpr std::int64_t count = 3000;  // 1,000 a second for 3 s
  const auto lateness = [](cleave::store& db) {
    std::vector<double> out;
    cleave::read_scope tx(db, cleave::detail::no_meta, cleave::strong());
    cleave::read_context ctx(&*tx, cleave::detail::no_meta);
    for (const auto late : ctx.many<std::int64_t>("select done_us - 1000 * due_ms from lateness"))
      out.push_back(static_cast<double>(late) / 1000.0);
    return out;
  };
  std::vector<double> by_hand;
  {
    setup s(dir / "by_hand.db");
    const auto t0 = cleave::detail::unix_now_ms() + 200;
    for (std::int64_t i = 0; i < count; ++i) {
      const auto due = t0 + i;
      std::this_thread::sleep_until(
          std::chrono::system_clock::time_point(std::chrono::milliseconds(due)));
      (void)s.commands.send(record{i, due});
    }
    by_hand = lateness(*s.db);
  }
  setup s(dir / "scheduled.db");
  const auto t0 = cleave::detail::unix_now_ms() + 1000;
  {
    cleave::write_scope tx(*s.db, cleave::detail::no_meta);
    cleave::write_context ctx(&*tx, cleave::detail::no_meta);
    for (std::int64_t i = 0; i < count; ++i)
      ctx.schedule(std::chrono::system_clock::time_point(std::chrono::milliseconds(t0 + i)),
                   record{i, t0 + i});
    tx.commit();
  }
  s.projector->start();
  const auto until = steady::now() + std::chrono::seconds(30);
  while (scalar(*s.db, "select count(*) from lateness") < count && steady::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  s.projector->stop();
  const auto late = lateness(*s.db);
  fmt::print(
      R"({{"bench":"workflow","case":"workflow_schedule_lateness","unit":"ms","value":{:.3f},"baseline":{:.3f},"ratio":{:.2f},"p50_ms":{:.3f},"p99_ms":{:.3f},"baseline_p50_ms":{:.3f},"baseline_p99_ms":{:.3f},"commands":{},"sent":{},"due_per_s":1000,"target_p99_ms":50,"baseline_is":"a thread sleeping until each due time and sending the command itself, p99"}})"
      "\n",
      percentile(late, 0.99), percentile(by_hand, 0.99),
      percentile(late, 0.99) / std::max(0.001, percentile(by_hand, 0.99)), percentile(late, 0.5),
      percentile(late, 0.99), percentile(by_hand, 0.5), percentile(by_hand, 0.99), count,
      late.size());
  std::fflush(stdout);
}

}  // namespace

int main() {
  spdlog::set_level(spdlog::level::warn);
  std::int64_t n = 20'000;
  if (const char* v = std::getenv("CLEAVE_BENCH_WORKFLOW_EVENTS"); v && *v) n = std::atoll(v);
  const auto dir =
      std::filesystem::temp_directory_path() / fmt::format("cleave-bench-workflow-{}", getpid());
  std::filesystem::create_directories(dir);
  fmt::print(stderr, "workflow: process manager, {} events\n", n);
  process_manager_case(dir, n);
  fmt::print(stderr, "workflow: schedule lateness, 1,000 due per second for 3 s\n");
  lateness_case(dir);
  std::filesystem::remove_all(dir);
  return 0;
}
