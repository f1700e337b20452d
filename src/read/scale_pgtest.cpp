// The read side past one process (ctest label `scale`, PostgreSQL): projector processes share the
// units of a partitioned handler projection through leases in the database. Killed, paused,
// joining and leaving processes never make the view apply an event twice or skip one.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cleave/read/projector.hpp>

#include "postgres_backend.hpp"
#include "projector_faults.hpp"
#include "temp_dir.hpp"

namespace fault {

GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(projector_faults);

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// One unit's lease as the database holds it.
struct lease_row {
  std::string owner;  // empty: none, or run out
  std::int64_t epoch = 0;
};

// Where each unit_tally unit's lease stands now.
std::map<std::string, lease_row> read_leases(cleave::store& db) {
  std::map<std::string, lease_row> out;
  auto& tx = db.begin_read({});
  tx.query(
      "select name, case when lease_until_ms > (extract(epoch from clock_timestamp()) * 1000) "
      "then coalesce(owner, '') else '' end, epoch from cleave_checkpoints "
      "where name like 'unit_tally#%'",
      {}, [&](const cleave::row_view& r) {
        out[std::string(std::get<std::string_view>(r.get(0)))] = {
            std::string(std::get<std::string_view>(r.get(1))), std::get<std::int64_t>(r.get(2))};
      });
  tx.finish();
  return out;
}

struct scale : ::testing::Test {
  cleave::testing::postgres_backend backend;
  std::unique_ptr<cleave::store> db = backend.open();
  cleave::testing::temp_dir logs;

  void SetUp() override {
    cleave::projector setup(*db);  // creates the view and its units' checkpoints
    setup.add(unit_tally());
  }

  // A projector process sharing the units as `node`, its log in a file of that name; each event
  // takes `slow_ms` longer.
  pid_t node(const std::string& name, int slow_ms = 0) {
    return spawn(
        {CLEAVE_FAULT_PROJECTOR, backend.location(), "share", name, std::to_string(slow_ms)},
        log_of(name));
  }
  std::string log_of(const std::string& name) { return logs.file(name + ".log"); }

  std::map<std::string, lease_row> leases() { return read_leases(*db); }
  // How many units `node` holds.
  std::size_t held_by(const std::string& node) {
    std::size_t n = 0;
    for (const auto& [unit, l] : leases()) n += l.owner == node;
    return n;
  }
  bool wait_until(const std::function<bool()>& done, std::chrono::seconds limit) {
    const auto until = steady::now() + limit;
    while (!done()) {
      if (steady::now() > until) return false;
      std::this_thread::sleep_for(20ms);
    }
    return true;
  }
  // Whether every unit has applied the whole log.
  bool caught_up() {
    cleave::projector reader(*db);
    reader.add(unit_tally());
    return reader.checkpoint("unit_tally") == db->head();
  }
  // Streams whose count differs from the log's (0: each event applied exactly once).
  std::int64_t differences() {
    const std::string fold =
        "select stream, count(*) as n from cleave_events where type = 'fault.ticked' group by "
        "stream";
    return scalar(*db, fmt::format("select count(*) from (({0}) except select stream, n from "
                                   "unit_tally) as a",
                                   fold)) +
           scalar(*db, fmt::format("select count(*) from (select stream, n from unit_tally "
                                   "except ({0})) as b",
                                   fold));
  }
  std::int64_t applied() {
    return scalar(*db, "select cast(coalesce(sum(n), 0) as bigint) from unit_tally");
  }
  std::string read_log(const std::string& name) {
    std::ifstream in(log_of(name));
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
};

// How many events the catch-up under kills applies: CLEAVE_SCALE_EVENTS, else 1,000,000.
std::int64_t scale_events() {
  if (const char* n = std::getenv("CLEAVE_SCALE_EVENTS"); n && *n) return std::atoll(n);
  return 1'000'000;
}

TEST_F(scale, three_nodes_catch_up_a_partitioned_handler_projection_through_kill9) {
  const auto events = scale_events();
  seed(*db, true, events);
  std::vector<std::string> names{"a", "b", "c"};
  std::vector<child_process> nodes(3);
  for (std::size_t i = 0; i < 3; ++i) nodes[i].pid = node(names[i]);
  std::mt19937 random(7);
  int kills = 0;
  const auto until = steady::now() + 600s;
  while (!caught_up() && steady::now() < until) {
    if (kills >= 10) {  // enough: let it finish
      std::this_thread::sleep_for(200ms);
      continue;
    }
    // (Batches of a handler projection are small and quick: kills every 150–550 ms land in the
    // middle of many of them.)
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + random() % 400));
    const auto victim = random() % 3;
    kill(nodes[victim].pid, SIGKILL);
    nodes[victim].wait();
    ++kills;
    names[victim] += "'";  // a new process: its predecessor's leases must run out
    nodes[victim].pid = node(names[victim]);
  }
  ASSERT_TRUE(caught_up()) << "not caught up after " << kills << " kills";
  EXPECT_GE(kills, 10) << "the catch-up ended before ten kills: raise CLEAVE_SCALE_EVENTS";
  EXPECT_EQ(applied(), events);
  EXPECT_EQ(differences(), 0);
}

TEST_F(scale, a_paused_node_cannot_commit_after_its_units_moved) {
  seed(*db, true, 12'000);
  // Each event takes a millisecond: a batch of a unit (a quarter of 2,000 events read) half a
  // second, against milliseconds to read it.
  child_process a{node("a", 1)};
  ASSERT_TRUE(wait_until([&] { return held_by("a") == 4; }, 20s));
  ASSERT_TRUE(wait_until([&] { return applied() > 0; }, 20s));
  std::this_thread::sleep_for(100ms);
  kill(a.pid, SIGSTOP);  // in the middle of its next batch
  const auto applied_when_paused = applied();
  child_process b{node("b")};
  // (Generous: b starts while the machine may be busy with other builds and tests; the leases
  // move a few seconds after a's run out.)
  ASSERT_TRUE(wait_until([&] { return held_by("b") == 4; }, 90s)) << "the leases did not move";
  kill(a.pid, SIGCONT);
  ASSERT_TRUE(wait_until([&] { return caught_up(); }, 300s));
  kill(a.pid, SIGTERM);
  kill(b.pid, SIGTERM);
  a.wait();
  b.wait();
  EXPECT_EQ(differences(), 0);
  EXPECT_EQ(applied(), 12'000);
  EXPECT_LT(applied_when_paused, 12'000);
  EXPECT_NE(read_log("a").find("was not committed"), std::string::npos)
      << "the paused node's batch should have been refused; its log:\n"
      << read_log("a");
}

TEST_F(scale, units_rebalance_as_nodes_join_and_leave_with_one_owner_at_a_time) {
  seed(*db, true, 300'000);
  // Sampled every 10 ms: a unit that changes hands gets a higher epoch (a batch of its previous
  // owner can no longer commit), and an epoch is never reused.
  std::atomic<bool> sampling{true};
  std::vector<std::string> violations;
  std::atomic<int> samples{0};
  std::thread sampler([&] {
    auto sampler_db = backend.open();
    std::map<std::string, lease_row> last;
    std::map<std::pair<std::string, std::int64_t>, std::string> owner_of_epoch;
    while (sampling) {
      const auto now = read_leases(*sampler_db);
      for (const auto& [unit, l] : now) {
        if (auto it = last.find(unit); it != last.end() && l.epoch < it->second.epoch)
          violations.push_back(fmt::format("{}: epoch went back", unit));
        if (l.owner.empty()) continue;
        auto [it, fresh] = owner_of_epoch.emplace(std::pair{unit, l.epoch}, l.owner);
        if (!fresh && it->second != l.owner)
          violations.push_back(
              fmt::format("{}: epoch {} held by {} and by {}", unit, l.epoch, it->second, l.owner));
      }
      last = now;
      ++samples;
      std::this_thread::sleep_for(10ms);
    }
  });
  struct stop_sampling {
    std::atomic<bool>& flag;
    std::thread& t;
    ~stop_sampling() {
      flag = false;
      if (t.joinable()) t.join();
    }
  } stop{sampling, sampler};
  child_process a{node("a")};
  ASSERT_TRUE(wait_until([&] { return held_by("a") == 4; }, 20s));
  child_process b{node("b")};
  EXPECT_TRUE(wait_until([&] { return held_by("a") == 2 && held_by("b") == 2; }, 10s))
      << "a node that joined did not get an even share";
  child_process c{node("c")};
  std::this_thread::sleep_for(1500ms);
  EXPECT_LE(held_by("a"), 2u);
  EXPECT_LE(held_by("b"), 2u);
  EXPECT_LE(held_by("c"), 2u);
  kill(b.pid, SIGTERM);  // leaves: hands its units back
  b.wait();
  EXPECT_TRUE(wait_until([&] { return held_by("a") + held_by("c") == 4; }, 10s))
      << "the units of a node that left were not taken";
  EXPECT_GE(held_by("c"), 1u) << "a node that joined third never got a share";
  kill(c.pid, SIGKILL);  // dies: its leases run out
  c.wait();
  const auto killed = steady::now();
  EXPECT_TRUE(wait_until([&] { return held_by("a") == 4; }, 10s));
  EXPECT_LT(steady::now() - killed, 5s);
  ASSERT_TRUE(wait_until([&] { return caught_up(); }, 300s));
  sampling = false;
  sampler.join();
  EXPECT_GT(samples.load(), 100);
  EXPECT_TRUE(violations.empty()) << fmt::format("{}", fmt::join(violations, "\n"));
  EXPECT_EQ(differences(), 0);
}

TEST_F(scale, a_unit_moves_past_events_of_types_it_does_not_handle) {
  seed(*db, true, 10'000);
  {
    cleave::projector p(*db);
    p.add(unit_tally());
    p.start();
    ASSERT_TRUE(wait_until([&] { return caught_up(); }, 60s));
    p.stop();
  }
  seed(*db, true, 500'000, "fault.noted", "o");  // no event of these is unit_tally's
  cleave::projector p(*db);
  p.add(unit_tally());
  p.start();
  EXPECT_TRUE(wait_until([&] { return caught_up(); }, 60s))
      << "a checkpoint stayed behind the events its unit does not handle";
  const auto status = p.status("unit_tally");
  p.stop();
  ASSERT_EQ(status.units.size(), 4u);
  for (const auto& u : status.units) EXPECT_EQ(u.checkpoint, db->head()) << u.name;
  EXPECT_EQ(differences(), 0);
}

TEST_F(scale, a_rebuild_started_twice_at_once_runs_once) {
  seed(*db, true, 50'000);
  child_process live{node("live")};  // another node runs the live projection meanwhile
  auto other_db = backend.open();
  cleave::projector first(*db), second(*other_db);
  first.add(unit_tally());
  second.add(unit_tally());
  std::atomic<int> swapped{0};
  std::vector<std::string> refusals;
  std::mutex m;
  const auto run = [&](cleave::projector& p) {
    try {
      if (p.rebuild("unit_tally").swapped) ++swapped;
    } catch (const cleave::error_exception& e) {
      std::lock_guard lock(m);
      refusals.push_back(e.error().describe());
    }
  };
  std::thread one([&] { run(first); }), two([&] { run(second); });
  one.join();
  two.join();
  EXPECT_EQ(swapped.load(), 1);
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_NE(refusals[0].find("is being rebuilt"), std::string::npos) << refusals[0];
  ASSERT_TRUE(wait_until([&] { return caught_up(); }, 120s));
  kill(live.pid, SIGTERM);
  live.wait();
  EXPECT_EQ(differences(), 0);
}

TEST_F(scale, a_replay_of_dead_letters_killed_half_way_moves_no_checkpoint) {
  seed(*db, true, 20'000);
  seed(*db, true, 1'000, "fault.ticked", "p");  // the streams that fail
  std::atomic<bool> poison{true};
  cleave::projector p(*db);
  p.set_max_attempts(1);
  p.add(unit_tally(4, &poison));
  p.catch_up();
  ASSERT_EQ(p.dead_letters("unit_tally").size(), 1'000u);
  const auto before = p.status("unit_tally").units;
  ASSERT_EQ(before.size(), 4u);
  for (const auto& u : before) EXPECT_EQ(u.checkpoint, db->head()) << u.name;
  {
    child_process replay{spawn({CLEAVE_FAULT_PROJECTOR, backend.location(), "replay", "3"})};
    // Killed once it has replayed some (a few milliseconds each), long before it is done.
    EXPECT_TRUE(wait_until([&] { return p.dead_letters("unit_tally").size() < 1'000; }, 30s));
    std::this_thread::sleep_for(100ms);
    kill(replay.pid, SIGKILL);
  }
  // Its last transaction may still be ending on the server (a COMMIT sent before the kill
  // commits all the same): counted once no other session is in the middle of one.
  EXPECT_TRUE(wait_until(
      [&] {
        return scalar(*db,
                      "select count(*) from pg_stat_activity where datname = current_database() "
                      "and backend_type = 'client backend' and pid <> pg_backend_pid() and "
                      "state <> 'idle'") == 0;
      },
      10s));
  const auto parked = p.dead_letters("unit_tally").size();
  EXPECT_GT(parked, 0u) << "the replay was not killed half-way";
  EXPECT_LT(parked, 1'000u) << "the replay did nothing before it was killed";
  const auto after = p.status("unit_tally").units;
  for (std::size_t i = 0; i < after.size(); ++i)
    EXPECT_EQ(after[i].checkpoint, before[i].checkpoint) << after[i].name;
  // Each replayed event was applied with its removal from the dead letters, once.
  EXPECT_EQ(applied(), 20'000 + static_cast<std::int64_t>(1'000 - parked));
  // The rest replayed by two processes at once: each event once all the same.
  poison = false;
  auto other_db = backend.open();
  cleave::projector other(*other_db);
  other.add(unit_tally());
  std::size_t by_other = 0;
  std::thread beside([&] { by_other = other.replay_dead_letters("unit_tally"); });
  const auto by_this = p.replay_dead_letters("unit_tally");
  beside.join();
  EXPECT_EQ(by_this + by_other, parked);
  EXPECT_TRUE(p.dead_letters("unit_tally").empty());
  EXPECT_EQ(differences(), 0);
}

TEST_F(scale, changing_the_number_of_partitions_rebuilds_the_view_beside_the_live_one) {
  seed(*db, true, 20'000);
  {
    cleave::projector four(*db);
    four.add(unit_tally(4));
    four.catch_up();
  }
  seed(*db, true, 5'000, "fault.ticked", "t");
  cleave::projector two(*db);
  two.add(unit_tally(2));
  auto status = two.status("unit_tally");
  EXPECT_TRUE(status.upgrading) << "a new partitioning must be built beside the live view";
  ASSERT_EQ(status.units.size(), 4u) << "the live view's units stand until the swap";
  two.catch_up();  // builds version "2 partitions" into a shadow and swaps it in
  status = two.status("unit_tally");
  EXPECT_FALSE(status.upgrading);
  ASSERT_EQ(status.units.size(), 2u);
  for (const auto& u : status.units) EXPECT_EQ(u.checkpoint, db->head()) << u.name;
  EXPECT_EQ(scalar(*db, "select count(*) from cleave_checkpoints where name like 'unit_tally#%/4'"),
            0)
      << "the old partitioning's checkpoints outlived the swap";
  EXPECT_EQ(differences(), 0);
  EXPECT_EQ(applied(), 25'000);
}

TEST_F(scale, every_unit_advances_past_transactions_that_rolled_back) {
  for (int i = 0; i < 20; ++i) {
    auto& tx = db->begin_write({});
    tx.exec(fmt::format("insert into cleave_events(stream, stream_version, type, payload) "
                        "select 'r{}-' || i, 1, 'fault.ticked', jsonb_build_object('stream', "
                        "'r') from generate_series(0, 99) as i",
                        i),
            {});
    tx.rollback();
  }
  seed(*db, true, 4'000);
  cleave::projector p(*db);
  p.add(unit_tally());
  p.start();
  EXPECT_TRUE(wait_until([&] { return caught_up(); }, 60s));
  const auto status = p.status("unit_tally");
  p.stop();
  ASSERT_EQ(status.units.size(), 4u);
  for (const auto& u : status.units) EXPECT_EQ(u.checkpoint, db->head()) << u.name;
  EXPECT_EQ(applied(), 4'000);
  EXPECT_EQ(differences(), 0);
}

}  // namespace
}  // namespace fault
