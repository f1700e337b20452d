#pragma once
// Fault tests (ctest label `fault`): projector processes killed with SIGKILL at random moments.
// After each kill the view must equal a fold of the log up to its checkpoint — nothing lost,
// nothing applied twice — and a standby projector must take over from a killed leader.

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>
#include <cleave/read/projector.hpp>

#include "fault_view.hpp"
#include "temp_dir.hpp"

namespace fault {

// A child process, killed (SIGKILL) when it goes out of scope, so a failing test leaves none.
struct child_process {
  pid_t pid = -1;
  ~child_process() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  // Waits for it; returns the wait status.
  int wait() {
    int status = 0;
    waitpid(std::exchange(pid, -1), &status, 0);
    return status;
  }
};

// Starts `args` (a path, then its arguments); its output and errors go to `log` when given.
inline pid_t spawn(std::vector<std::string> args, const std::string& log = {}) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (!log.empty()) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

inline void exec(cleave::store& db, const std::string& sql) {
  auto& tx = db.begin_write({});
  tx.exec(sql, {});
  tx.commit();
}

inline std::int64_t scalar(cleave::store& db, const std::string& sql) {
  std::int64_t out = -1;
  auto& tx = db.begin_read({});
  tx.query(sql, {}, [&](const cleave::row_view& r) { out = std::get<std::int64_t>(r.get(0)); });
  tx.finish();
  return out;
}

// Appends n events of `type` over 1,000 streams (`prefix` and a number) with set-based SQL (the
// log's own format).
inline void seed(cleave::store& db, bool postgres, std::int64_t n,
                 const std::string& type = "fault.ticked", const std::string& prefix = "s") {
  if (postgres)
    exec(db, fmt::format("insert into cleave_events(stream, stream_version, type, payload) "
                         "select '{1}' || (i % 1000), i / 1000 + 1 + coalesce((select "
                         "max(stream_version) from cleave_events where stream = '{1}0'), 0), "
                         "'{2}', jsonb_build_object('stream', '{1}' || (i % 1000)) "
                         "from generate_series(0, {0} - 1) as i",
                         n, prefix, type));
  else
    exec(db, fmt::format("with recursive i(v) as (select 0 union all select v + 1 from i "
                         "where v + 1 < {0}) "
                         "insert into cleave_events(stream, stream_version, type, payload) "
                         "select '{1}' || (v % 1000), v / 1000 + 1, '{2}', "
                         "json_object('stream', '{1}' || (v % 1000)) from i",
                         n, prefix, type));
}

template <class Backend>
struct projector_faults : testing::Test {
  Backend backend;
  std::unique_ptr<cleave::store> db = backend.open();

  void SetUp() override {
    cleave::projector setup(*db);  // creates the view and its checkpoint
    setup.add(tally());
  }

  // Appends n events over 1,000 streams with set-based SQL (the log's own format).
  void seed(std::int64_t n) { fault::seed(*db, Backend::is_postgres, n); }

  // Rows where the view and a fold of the log up to its checkpoint differ (0: exactly once).
  std::int64_t differences() {
    cleave::projector reader(*db);
    reader.add(tally());
    const auto at = reader.checkpoint("tally");
    const std::string upto = Backend::is_postgres
                                 ? fmt::format("(transaction_id, position) <= ('{}'::xid8, {})",
                                               at.transaction(), at.position())
                                 : fmt::format("position <= {}", at.position());
    const std::string fold = fmt::format(
        "select stream, count(*) as n from cleave_events where {} group by stream", upto);
    return scalar(*db, fmt::format("select count(*) from ({} except select stream, n from tally) "
                                   "as a",
                                   fold)) +
           scalar(*db, fmt::format("select count(*) from (select stream, n from tally except {}) "
                                   "as b",
                                   fold));
  }
  std::int64_t applied() {
    return scalar(*db, "select cast(coalesce(sum(n), 0) as bigint) from tally");
  }
};

TYPED_TEST_SUITE_P(projector_faults);

TYPED_TEST_P(projector_faults,
             killed_twenty_times_during_a_million_event_catch_up_the_view_stays_exact) {
  constexpr std::int64_t events = 1'000'000;
  this->seed(events);
  std::mt19937 rng(20261127);
  std::uniform_int_distribution<int> delay_ms(5, 120);
  int kills = 0, mid_catch_up = 0;
  std::int64_t last = 0;
  while (kills < 20) {
    child_process child{spawn({CLEAVE_FAULT_PROJECTOR, this->backend.location(), "catch-up"})};
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    kill(child.pid, SIGKILL);
    child.wait();
    ++kills;
    const auto now = this->applied();
    if (now < events) ++mid_catch_up;
    ASSERT_EQ(this->differences(), 0) << "after kill " << kills << ", " << now << " applied";
    EXPECT_GE(now, last) << "the view went backwards";
    last = now;
  }
  EXPECT_GE(mid_catch_up, 15) << "most kills should land before the catch-up is done";
  // A last run to the end: every event exactly once.
  child_process last_run{spawn({CLEAVE_FAULT_PROJECTOR, this->backend.location(), "catch-up"})};
  const int status = last_run.wait();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(this->applied(), events);
  EXPECT_EQ(this->differences(), 0);
}

TYPED_TEST_P(projector_faults, a_standby_takes_over_when_the_leader_is_killed) {
  cleave::testing::temp_dir markers;
  cleave::command_bus commands{this->db.get()};
  commands.add(on_tick);
  std::atomic<bool> writing{true};
  std::atomic<int> sent{0};
  std::thread writer([&] {
    while (writing) {
      if (commands.send(tick{fmt::format("s{}", sent % 50)})) ++sent;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  const auto a_marker = markers.file("a"), b_marker = markers.file("b");
  struct stop_writing {
    std::atomic<bool>& flag;
    std::thread& t;
    ~stop_writing() {
      flag = false;
      if (t.joinable()) t.join();
    }
  } stop_writer{writing, writer};
  child_process a{spawn({CLEAVE_FAULT_PROJECTOR, this->backend.location(), "serve", a_marker})};
  auto wait_file = [](const std::string& f) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!std::filesystem::exists(f) && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return std::filesystem::exists(f);
  };
  ASSERT_TRUE(wait_file(a_marker)) << "the first projector never led";
  child_process b{spawn({CLEAVE_FAULT_PROJECTOR, this->backend.location(), "serve", b_marker})};
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_FALSE(std::filesystem::exists(b_marker)) << "two leaders at once";
  kill(a.pid, SIGKILL);
  a.wait();
  EXPECT_TRUE(wait_file(b_marker)) << "the standby did not take over";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  writing = false;
  writer.join();
  // The new leader catches up with everything written, each event once.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (this->applied() < sent && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  kill(b.pid, SIGTERM);
  b.wait();
  EXPECT_EQ(this->applied(), sent.load());
  EXPECT_EQ(this->differences(), 0);
  EXPECT_GT(sent.load(), 100);
}

REGISTER_TYPED_TEST_SUITE_P(
    projector_faults, killed_twenty_times_during_a_million_event_catch_up_the_view_stays_exact,
    a_standby_takes_over_when_the_leader_is_killed);

}  // namespace fault
