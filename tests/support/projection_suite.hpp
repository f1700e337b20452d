#pragma once
// Projections on any backend (typed tests, instantiated per backend).

#include <atomic>
#include <chrono>
#include <map>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>
#include <cleave/read/consistency.hpp>
#include <cleave/read/projector.hpp>

#include "views_model.hpp"

namespace views {

template <class Backend>
struct projections : testing::Test {
  Backend backend;
  std::unique_ptr<cleave::store> db = backend.open();
};

TYPED_TEST_SUITE_P(projections);

TYPED_TEST_P(projections, an_inline_projection_changes_its_view_in_the_commands_transaction) {
  cleave::projector projector(*this->db);
  projector.add(cards("card_inline").inline_());
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  ASSERT_TRUE(commands.send(register_customer{"c1", "Ada"}));
  EXPECT_EQ(rows(*this->db, "card_inline"), 1) << "the view lags the command";
  ASSERT_FALSE(commands.send(register_customer{"c2", "boom"}));
  EXPECT_EQ(rows(*this->db, "card_inline"), 1) << "a failed command left a view change behind";
}

TYPED_TEST_P(projections, an_async_projection_catches_up_and_moves_its_checkpoint) {
  cleave::projector projector(*this->db);
  projector.add(cards("card_async"));
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  cleave::position_token last;
  for (int i = 0; i < 5; ++i)
    last = commands.send(register_customer{"c" + std::to_string(i), "n"}).value().position;
  EXPECT_EQ(rows(*this->db, "card_async"), 0);
  EXPECT_EQ(settle(projector, 2), 5u);
  EXPECT_EQ(rows(*this->db, "card_async"), 5);
  EXPECT_EQ(projector.checkpoint("card_async"), last);
  EXPECT_EQ(projector.catch_up(), 0u);
}

TYPED_TEST_P(projections, a_failing_batch_changes_neither_view_nor_checkpoint) {
  std::atomic<bool> fail{true};
  cleave::projector projector(*this->db);
  cleave::projection counting{"visits"};
  counting.schema("create table {view}(n bigint not null)")
      .on([&](const customer_registered& e, cleave::view_context& v) {
        v.exec("insert into {view}(n) values (1)");
        if (fail && e.name == "bad") throw std::runtime_error("cannot project this one");
      });
  projector.add(std::move(counting));
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  ASSERT_TRUE(commands.send(register_customer{"a", "good"}));
  ASSERT_TRUE(commands.send(register_customer{"b", "bad"}));
  wait_readable(*this->db);
  EXPECT_THROW(projector.catch_up(10), std::runtime_error);
  EXPECT_EQ(rows(*this->db, "visits"), 0);
  EXPECT_TRUE(projector.checkpoint("visits").empty());
  fail = false;
  EXPECT_EQ(settle(projector, 10), 2u);
  EXPECT_EQ(rows(*this->db, "visits"), 2) << "an event was applied twice or not at all";
}

TYPED_TEST_P(projections, two_projectors_at_once_apply_each_event_once) {
  cleave::projector writer(*this->db);
  cleave::command_bus commands{this->db.get()};
  commands.add(register_handler);
  for (int i = 0; i < 60; ++i)
    ASSERT_TRUE(commands.send(register_customer{"c" + std::to_string(i), "n"}));
  auto counter = [] {
    cleave::projection p{"tally"};
    p.schema("create table {view}(n bigint not null)")
        .on([](const customer_registered&, cleave::view_context& v) {
          v.exec("insert into {view}(n) values (1)");
        });
    return p;
  };
  std::vector<std::thread> racers;
  for (int r = 0; r < 2; ++r)
    racers.emplace_back([&] {
      auto mine = this->backend.open();  // another process
      cleave::projector p(*mine);
      p.add(counter());
      while (p.catch_up(7) > 0) {
      }
    });
  for (auto& t : racers) t.join();
  cleave::projector check(*this->db);
  check.add(counter());
  settle(check);
  EXPECT_EQ(rows(*this->db, "tally"), 60);
}

TYPED_TEST_P(projections, the_worker_wakes_on_commit_without_waiting_for_its_poll) {
  cleave::projector projector(*this->db, nullptr, slow_poll());
  projector.add(cards("card_live"));
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  projector.start();
  ASSERT_TRUE(commands.send(register_customer{"c1", "Ada"}));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (rows(*this->db, "card_live") == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(rows(*this->db, "card_live"), 1);
  projector.stop();
}

TYPED_TEST_P(projections, at_least_waits_for_the_view_and_says_when_it_cannot) {
  cleave::projector projector(*this->db, nullptr, slow_poll());
  projector.add(cards("card_ryw"));
  cleave::command_bus commands{&projector.source()};
  cleave::query_bus queries{this->db.get()};
  commands.add(register_handler);
  queries.use<cleave::read_your_writes>(projector).reads("views.card_by_id", {"card_ryw"});
  queries.add([](const card_by_id& q, const cleave::read_context& view) {
    return view.one<card>("select id, name, visits from card_ryw where id = $1", q.id);
  });
  // The worker is not running: the view stays behind, and the query says so in time.
  auto done = commands.send(register_customer{"c1", "Ada"});
  cleave::request_meta meta;
  meta.consistency = cleave::at_least(done->position);
  meta.deadline = cleave::clock::now() + std::chrono::milliseconds(300);
  auto stale = queries.ask(card_by_id{"c1"}, meta);
  ASSERT_FALSE(stale);
  EXPECT_EQ(stale.error().category, cleave::errc::unavailable);
  EXPECT_THAT(stale.error().message, testing::HasSubstr("short of the requested"));
  EXPECT_EQ(queries.ask(card_by_id{"c1"}).error().category, cleave::errc::not_found)
      << "an eventual read does not wait";
  // With the worker, read-your-writes holds for every command.
  projector.start();
  for (int i = 2; i < 12; ++i) {
    const std::string id = "c" + std::to_string(i);
    auto sent = commands.send(register_customer{id, "n"});
    cleave::request_meta fresh;
    fresh.consistency = cleave::at_least(sent->position);
    auto seen = queries.ask(card_by_id{id}, fresh);
    ASSERT_TRUE(seen) << seen.error().describe();
    EXPECT_EQ(seen->id, id);
  }
  projector.stop();
}

TYPED_TEST_P(projections, a_poison_event_is_parked_after_its_retries_and_can_be_replayed) {
  std::atomic<bool> broken{true};
  cleave::projector projector(*this->db);
  projector.set_max_attempts(3);
  cleave::projection fragile{"fragile"};
  fragile.schema("create table {view}(id text primary key)")
      .on([&](const customer_registered& e, cleave::view_context& v) {
        v.exec("insert into {view}(id) values ($1)", e.id);
        if (broken && e.name == "poison") throw std::runtime_error("cannot handle poison");
      });
  projector.add(std::move(fragile));
  projector.add(cards("steady"));  // another projection, unaffected
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  for (const auto* name : {"a", "poison", "b"})
    ASSERT_TRUE(commands.send(register_customer{std::string("id-") + name, name}));
  wait_readable(*this->db);
  EXPECT_THROW(projector.catch_up(), std::runtime_error);  // attempt 1: the batch rolls back
  EXPECT_EQ(rows(*this->db, "fragile"), 0);
  EXPECT_THROW(projector.catch_up(), std::runtime_error);  // attempt 2
  projector.catch_up();                                    // attempt 3: parked, the rest applied
  EXPECT_EQ(rows(*this->db, "fragile"), 2);
  EXPECT_EQ(rows(*this->db, "steady"), 3);
  auto parked = projector.dead_letters("fragile");
  ASSERT_EQ(parked.size(), 1u);
  EXPECT_EQ(parked[0].type, "views.customer_registered");
  EXPECT_EQ(parked[0].payload["name"], "poison");
  EXPECT_EQ(parked[0].error, "cannot handle poison");
  EXPECT_EQ(projector.replay_dead_letters("fragile"), 0u);  // still broken: stays parked
  EXPECT_EQ(projector.dead_letters("fragile").size(), 1u);
  broken = false;
  EXPECT_EQ(projector.replay_dead_letters("fragile"), 1u);
  EXPECT_TRUE(projector.dead_letters("fragile").empty());
  EXPECT_EQ(rows(*this->db, "fragile"), 3);
}

TYPED_TEST_P(projections, bounded_and_strong_reads_wait_for_fresh_views) {
  cleave::projector projector(*this->db, nullptr, slow_poll());
  projector.add(cards("card_fresh"));
  cleave::command_bus commands{&projector.source()};
  cleave::query_bus queries{this->db.get()};
  commands.add(register_handler);
  queries.use<cleave::read_your_writes>(projector).reads("views.card_by_id", {"card_fresh"});
  queries.add([](const card_by_id& q, const cleave::read_context& view) {
    return view.one<card>("select id, name, visits from card_fresh where id = $1", q.id);
  });
  ASSERT_TRUE(commands.send(register_customer{"c1", "Ada"}));
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  // No worker: the view is more than 20 ms stale, and stays so.
  cleave::request_meta meta;
  meta.deadline = cleave::clock::now() + std::chrono::milliseconds(200);
  meta.consistency = cleave::bounded(std::chrono::milliseconds(20));
  auto stale = queries.ask(card_by_id{"c1"}, meta);
  ASSERT_FALSE(stale);
  EXPECT_EQ(stale.error().category, cleave::errc::unavailable);
  EXPECT_THAT(stale.error().message, testing::HasSubstr("ms behind the log"));
  meta.consistency = cleave::strong();
  meta.deadline = cleave::clock::now() + std::chrono::milliseconds(200);
  EXPECT_EQ(queries.ask(card_by_id{"c1"}, meta).error().category, cleave::errc::unavailable);
  const auto st = projector.status("card_fresh");
  EXPECT_EQ(st.lag_events, 1u);
  EXPECT_GT(st.lag_seconds, 0.04);
  // A generous bound is met as it is (within a deadline not yet passed).
  meta.consistency = cleave::bounded(std::chrono::minutes(1));
  meta.deadline = cleave::clock::now() + std::chrono::seconds(5);
  EXPECT_EQ(queries.ask(card_by_id{"c1"}, meta).error().category, cleave::errc::not_found);
  // With the worker running, strong and tight bounds are met.
  projector.start();
  for (int i = 2; i < 8; ++i) {
    const std::string id = "c" + std::to_string(i);
    ASSERT_TRUE(commands.send(register_customer{id, "n"}));
    cleave::request_meta fresh;
    fresh.consistency = i % 2 ? cleave::strong() : cleave::bounded(std::chrono::milliseconds(0));
    auto seen = queries.ask(card_by_id{id}, fresh);
    ASSERT_TRUE(seen) << seen.error().describe();
  }
  projector.stop();
  const auto caught = projector.status("card_fresh");
  EXPECT_EQ(caught.lag_events, 0u);
  EXPECT_EQ(caught.lag_seconds, 0.0);
}

TYPED_TEST_P(projections, a_projector_in_another_process_wakes_on_commit) {
  auto other = this->backend.open();  // the projector's own process
  cleave::projector remote(*other, nullptr, slow_poll());
  remote.add(cards("card_remote"));
  remote.start();
  cleave::command_bus commands{this->db.get()};  // the writer knows no projector
  commands.add(register_handler);
  for (int i = 0; i < 5; ++i) {
    auto done = commands.send(register_customer{"c" + std::to_string(i), "n"});
    const auto at = remote.wait_for("card_remote", done->position,
                                    cleave::clock::now() + std::chrono::seconds(10));
    EXPECT_FALSE(at < done->position) << "no wake-up reached the other process's projector";
  }
  EXPECT_EQ(rows(*this->db, "card_remote"), 5);
}

TYPED_TEST_P(projections, one_of_two_projectors_leads_and_the_other_takes_over) {
  auto first_store = this->backend.open(), second_store = this->backend.open();
  auto fast = slow_poll();
  fast.standby_retry = std::chrono::milliseconds(20);
  auto first = std::make_unique<cleave::projector>(*first_store, nullptr, fast);
  cleave::projector second(*second_store, nullptr, fast);
  first->add(cards("card_led"));
  second.add(cards("card_led"));
  first->start();
  const auto until = cleave::clock::now() + std::chrono::seconds(5);
  while (!first->leading() && cleave::clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  second.start();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_TRUE(first->leading());
  EXPECT_FALSE(second.leading()) << "two leaders";
  first.reset();  // the leader goes away
  const auto later = cleave::clock::now() + std::chrono::seconds(5);
  while (!second.leading() && cleave::clock::now() < later)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(second.leading()) << "the standby did not take over";
}

TYPED_TEST_P(projections, a_view_in_another_store_is_async_only) {
  auto views = this->backend.open();
  cleave::projector projector(*this->db);
  EXPECT_THROW(projector.add(cards("card_elsewhere").inline_(), views.get()), std::logic_error);
  projector.add(cards("card_elsewhere"), views.get());
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  ASSERT_TRUE(commands.send(register_customer{"c1", "Ada"}));
  EXPECT_EQ(settle(projector), 1u);
  EXPECT_EQ(rows(*views, "card_elsewhere"), 1);
}

TYPED_TEST_P(projections, a_rebuild_swaps_in_a_shadow_and_resumes_after_a_crash) {
  cleave::projector projector(*this->db);
  projector.add(cards("card_rebuilt"));
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  for (int i = 0; i < 30; ++i)
    ASSERT_TRUE(commands.send(register_customer{"c" + std::to_string(i), "n"}));
  settle(projector);
  // Damage the live view, as a buggy handler or a hand edit would.
  {
    auto& tx = this->db->begin_write({});
    tx.exec("update card_rebuilt set name = 'wrong' where id = 'c3'", {});
    tx.commit();
  }
  // Verify mode finds the difference and leaves the live view alone.
  cleave::rebuild_options verify;
  verify.verify = true;
  wait_readable(*this->db);
  auto checked = projector.rebuild("card_rebuilt", verify);
  EXPECT_FALSE(checked.swapped);
  EXPECT_EQ(checked.differences, 2);  // the wrong row, and the right one
  EXPECT_EQ(checked.difference,
            "the live view has 30 rows, the rebuilt one 30; 1 row is only in the live view (first "
            "column: 'c3'); 1 row is only in the rebuilt one (first column: 'c3')");
  EXPECT_FALSE(projector.status("card_rebuilt").rebuild_position)
      << "a rebuild that differs is dropped, never resumed by the next one";
  // A rebuild that dies after its second chunk...
  cleave::rebuild_options crashing;
  crashing.chunk = 7;
  int chunks = 0;
  crashing.on_progress = [&](const cleave::rebuild_progress& p) {
    if (p.applied > 0 && ++chunks == 2) throw std::runtime_error("killed");
  };
  wait_readable(*this->db);
  EXPECT_THROW(projector.rebuild("card_rebuilt", crashing), std::runtime_error);
  EXPECT_TRUE(projector.status("card_rebuilt").rebuild_position.has_value());
  // ...resumes where it stopped, and swaps the corrected view in.
  ASSERT_TRUE(commands.send(register_customer{"late", "n"}));
  std::vector<cleave::rebuild_progress> seen;
  cleave::rebuild_options resume;
  resume.chunk = 7;
  resume.on_progress = [&](const cleave::rebuild_progress& p) { seen.push_back(p); };
  wait_readable(*this->db);
  auto done = projector.rebuild("card_rebuilt", resume);
  EXPECT_TRUE(done.swapped);
  EXPECT_TRUE(done.resumed);
  EXPECT_EQ(done.applied, 31u - 14u) << "the resumed rebuild started over";
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front().total, 31u - 14u);
  EXPECT_EQ(rows(*this->db, "card_rebuilt"), 31);
  auto fixed = cleave::query_bus{this->db.get()};
  fixed.add([](const card_by_id& q, const cleave::read_context& view) {
    return view.one<card>("select id, name, visits from card_rebuilt where id = $1", q.id);
  });
  EXPECT_EQ(fixed.ask(card_by_id{"c3"})->name, "n");
  EXPECT_FALSE(projector.status("card_rebuilt").rebuild_position);
  EXPECT_EQ(projector.checkpoint("card_rebuilt"), this->db->head());
  // The projection goes on from the swapped-in view, and a second rebuild works too.
  ASSERT_TRUE(commands.send(register_customer{"after", "n"}));
  EXPECT_EQ(settle(projector), 1u);
  EXPECT_TRUE(projector.rebuild("card_rebuilt").swapped);
  EXPECT_EQ(rows(*this->db, "card_rebuilt"), 32);
}

TYPED_TEST_P(projections, a_fold_takes_a_whole_batch_and_writes_each_key_once) {
  // Batches start at one event and double while they come back full, up to four.
  cleave::projector_options growing;
  growing.batch = 1;
  growing.max_batch = 4;
  cleave::projector projector(*this->db, nullptr, growing);
  std::vector<std::size_t> batch_sizes;
  cleave::projection per_name{"names_count"};
  per_name.schema("create table {view}(name text primary key, n bigint not null)")
      .fold([&](const std::vector<customer_registered>& events, cleave::view_context& v) {
        batch_sizes.push_back(events.size());
        std::map<std::string, std::int64_t> counts;
        for (const auto& e : events) ++counts[e.name];
        for (const auto& [name, n] : counts)
          v.exec(
              "insert into {view}(name, n) values ($1, $2) on conflict(name) do update set n = "
              "{view}.n + excluded.n",
              name, n);
      });
  projector.add(std::move(per_name));
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(commands.send(register_customer{"c" + std::to_string(i), i % 3 ? "x" : "y"}));
  EXPECT_EQ(settle(projector), 10u);
  EXPECT_EQ(batch_sizes, (std::vector<std::size_t>{1, 2, 4, 3}));
  EXPECT_EQ(rows(*this->db, "names_count"), 2);
  auto& tx = this->db->begin_read({});
  std::int64_t xs = 0;
  tx.query("select n from names_count where name = 'x'", {},
           [&](const cleave::row_view& r) { xs = std::get<std::int64_t>(r.get(0)); });
  tx.finish();
  EXPECT_EQ(xs, 6);
}

TYPED_TEST_P(projections, a_memory_view_is_built_from_the_log_and_read_under_a_lock) {
  cleave::projector projector(*this->db, nullptr, slow_poll());
  cleave::memory_view<std::map<std::string, std::string>> names{"names_in_memory"};
  names.on([](const customer_registered& e, std::map<std::string, std::string>& state) {
    state[e.id] = e.name;
  });
  projector.add(names);
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  ASSERT_TRUE(commands.send(register_customer{"c1", "Ada"}));
  EXPECT_EQ(names.read([](const auto& s) { return s.size(); }), 0u);
  EXPECT_EQ(projector.status("names_in_memory").lag_events, 1u);
  EXPECT_EQ(settle(projector), 1u);
  EXPECT_EQ(names.read([](const auto& s) { return s.at("c1"); }), "Ada");
  projector.start();
  auto sent = commands.send(register_customer{"c2", "Grace"});
  const auto at = projector.wait_for("names_in_memory", sent->position,
                                     cleave::clock::now() + std::chrono::seconds(10));
  EXPECT_FALSE(at < sent->position);
  EXPECT_EQ(names.read([](const auto& s) { return s.at("c2"); }), "Grace");
  projector.stop();
  EXPECT_EQ(projector.status("names_in_memory").mode, cleave::projection_mode::memory);
}

struct people_by_name {
  std::string name;
  using response = std::int64_t;
};
CLEAVE_QUERY(people_by_name, "views.people_by_name", name)

TYPED_TEST_P(projections,
             a_materialized_view_refreshes_when_a_read_waits_and_records_its_position) {
  constexpr cleave::migration people[] = {
      {1, "people", "create table people(id text primary key, name text not null)"}};
  this->db->migrate("views_test", people);
  cleave::projector projector(*this->db, nullptr, slow_poll());
  cleave::projection by_name{"people_mv"};
  by_name.materialized("select name, count(*) as n from people group by name", "name",
                       {.after_events = 1000, .after = std::chrono::minutes(10)});
  projector.add(std::move(by_name));
  cleave::command_bus commands{&projector.source()};
  commands.add([](const register_customer& c, cleave::write_context& tx) -> cleave::result<void> {
    tx.exec("insert into people(id, name) values ($1, $2)", c.id, c.name);
    tx.emit(c.id, customer_registered{c.id, c.name});
    return {};
  });
  cleave::query_bus queries{this->db.get()};
  queries.use<cleave::read_your_writes>(projector).reads("views.people_by_name", {"people_mv"});
  queries.add([](const people_by_name& q, const cleave::read_context& view) {
    return cleave::result<std::int64_t>(
        view.one<std::int64_t>("select n from people_mv where name = $1", q.name).value_or(0));
  });
  cleave::position_token last;
  for (const auto* id : {"a", "b", "c"})
    last = commands.send(register_customer{id, "Ada"}).value().position;
  EXPECT_EQ(queries.ask(people_by_name{"Ada"}).value(), 0) << "eventual: the view as it is";
  wait_readable(*this->db);
  EXPECT_EQ(projector.status("people_mv").lag_events, 3u);
  EXPECT_EQ(projector.status("people_mv").mode, cleave::projection_mode::materialized);
  // Not due by its policy, but a read that waits makes the worker refresh it now.
  projector.start();
  cleave::request_meta meta;
  meta.consistency = cleave::at_least(last);
  auto seen = queries.ask(people_by_name{"Ada"}, meta);
  ASSERT_TRUE(seen) << seen.error().describe();
  EXPECT_EQ(*seen, 3);
  EXPECT_FALSE(projector.checkpoint("people_mv") < last);
  projector.stop();
  // catch_up() refreshes whatever is behind.
  ASSERT_TRUE(commands.send(register_customer{"d", "Ada"}));
  wait_readable(*this->db);
  projector.catch_up();
  EXPECT_EQ(queries.ask(people_by_name{"Ada"}).value(), 4);
  EXPECT_EQ(projector.status("people_mv").lag_events, 0u);
  auto views = this->backend.open();
  EXPECT_THROW(projector.add(cleave::projection{"elsewhere"}.materialized("select 1 as k", "k"),
                             views.get()),
               std::logic_error);
}

TYPED_TEST_P(projections, a_set_based_projection_applies_a_batch_in_one_statement) {
  cleave::projector projector(*this->db);
  cleave::projection per_name{"names_set_based"};
  per_name.schema("create table {view}(name text primary key, n bigint not null)")
      .batch_sql(
          "insert into {view}(name, n) select payload->>'name', count(*) from {events} "
          "where type = 'views.customer_registered' group by payload->>'name' "
          "on conflict(name) do update set n = {view}.n + excluded.n");
  projector.add(std::move(per_name));
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(commands.send(register_customer{"c" + std::to_string(i), i % 3 ? "x" : "y"}));
  EXPECT_EQ(settle(projector, 4), 10u);
  auto count = [&](const std::string& name) {
    std::int64_t n = 0;
    auto& tx = this->db->begin_read({});
    tx.query("select n from names_set_based where name = '" + name + "'", {},
             [&](const cleave::row_view& r) { n = std::get<std::int64_t>(r.get(0)); });
    tx.finish();
    return n;
  };
  EXPECT_EQ(count("x"), 6);
  EXPECT_EQ(count("y"), 4);
  EXPECT_EQ(projector.checkpoint("names_set_based"), this->db->head());
  cleave::rebuild_options verify;
  verify.verify = true;
  verify.chunk = 3;
  wait_readable(*this->db);
  auto rebuilt = projector.rebuild("names_set_based", verify);
  EXPECT_TRUE(rebuilt.swapped);
  EXPECT_EQ(rebuilt.differences, 0);
  EXPECT_EQ(rebuilt.applied, 10u);
  EXPECT_EQ(count("x"), 6);
  // Its batches grow as a fold's do, up to their own limit.
  cleave::projector_options growing;
  growing.batch = 1;
  growing.max_set_based_batch = 4;
  cleave::projector grows(*this->db, nullptr, growing);
  cleave::projection sizes{"batch_sizes"};
  sizes.schema("create table {view}(batch bigint primary key, n bigint not null)")
      .batch_sql(
          "insert into {view}(batch, n) select (select count(*) from {view}) + 1, count(*) "
          "from {events}");
  grows.add(std::move(sizes));
  EXPECT_EQ(grows.catch_up(), 10u);
  std::vector<std::int64_t> batch_sizes;
  auto& tx = this->db->begin_read({});
  tx.query("select n from batch_sizes order by batch", {}, [&](const cleave::row_view& r) {
    batch_sizes.push_back(std::get<std::int64_t>(r.get(0)));
  });
  tx.finish();
  EXPECT_EQ(batch_sizes, (std::vector<std::int64_t>{1, 2, 4, 3}));
  auto views = this->backend.open();
  cleave::projection elsewhere{"elsewhere_set_based"};
  elsewhere.schema("create table {view}(n bigint)").batch_sql("insert into {view} select 1");
  EXPECT_THROW(projector.add(std::move(elsewhere), views.get()), std::logic_error);
}

// In one transaction: a customer under the old type name (renamed by an upcaster), one under
// the current one, and five card visits (a type the views below do not handle).
inline void emit_renamed_registered_and_visits(cleave::store& db) {
  auto& tx = db.begin_write({});
  cleave::write_context ctx(&tx, cleave::detail::no_meta);
  ctx.emit("old", customer_signed_up{"old", "Old"});
  ctx.emit("new", customer_registered{"new", "New"});
  for (int i = 0; i < 5; ++i) ctx.emit("new", card_visited{"new"});
  tx.commit();
}

// One more card visit, in a transaction of its own.
inline void emit_visit(cleave::store& db) {
  auto& tx = db.begin_write({});
  cleave::write_context ctx(&tx, cleave::detail::no_meta);
  ctx.emit("new", card_visited{"new"});
  tx.commit();
}

TYPED_TEST_P(projections, a_projection_reads_only_what_it_handles_and_still_reaches_the_head) {
  cleave::upcasters renames;
  renames.add("views.customer_signed_up", "views.customer_registered");
  cleave::projector projector(*this->db, &renames);
  projector.add(cards("cards_of_some_types"));
  emit_renamed_registered_and_visits(*this->db);
  // The renamed event is read (and upcast), the visits are not; the checkpoint passes them.
  EXPECT_EQ(settle(projector), 2u);
  EXPECT_EQ(rows(*this->db, "cards_of_some_types"), 2);
  EXPECT_EQ(projector.checkpoint("cards_of_some_types"), this->db->head());
  // Only unhandled events since: the checkpoint still moves to the head.
  emit_visit(*this->db);
  EXPECT_EQ(settle(projector), 0u);
  EXPECT_EQ(projector.checkpoint("cards_of_some_types"), this->db->head());
  EXPECT_EQ(projector.status("cards_of_some_types").lag_events, 0u);
}

TYPED_TEST_P(projections, a_memory_view_reads_only_what_it_handles_and_still_reaches_the_head) {
  cleave::upcasters renames;
  renames.add("views.customer_signed_up", "views.customer_registered");
  cleave::projector projector(*this->db, &renames, slow_poll());
  cleave::memory_view<std::map<std::string, std::string>> names{"names_of_some_types"};
  names.on([](const customer_registered& e, std::map<std::string, std::string>& state) {
    state[e.id] = e.name;
  });
  projector.add(names);
  emit_renamed_registered_and_visits(*this->db);
  // The renamed event is read (and upcast), the visits are not; the checkpoint passes them.
  EXPECT_EQ(settle(projector), 2u);
  EXPECT_EQ(names.read([](const auto& s) { return s; }),
            (std::map<std::string, std::string>{{"new", "New"}, {"old", "Old"}}));
  EXPECT_EQ(projector.checkpoint("names_of_some_types"), this->db->head());
  // Only unhandled events since: the checkpoint still moves to the head, and a wait for the
  // last of them ends.
  emit_visit(*this->db);
  EXPECT_EQ(settle(projector), 0u);
  EXPECT_EQ(projector.checkpoint("names_of_some_types"), this->db->head());
  EXPECT_EQ(projector.status("names_of_some_types").lag_events, 0u);
  EXPECT_FALSE(projector.wait_for("names_of_some_types", this->db->head(),
                                  cleave::clock::now() + std::chrono::seconds(5)) <
               this->db->head());
}

TYPED_TEST_P(projections, a_long_log_is_read_ahead_and_applied_in_order) {
  // Batches of 3 growing to 16: a log of 700 events is dozens of batches, read ahead on another
  // thread while each is applied; every view gets each event it handles once, in log order.
  cleave::projector_options small = slow_poll();
  small.batch = 3;
  small.max_batch = 16;
  small.max_memory_batch = 16;
  cleave::projector projector(*this->db, nullptr, small);
  using order = std::vector<std::string>;
  cleave::memory_view<order> seen{"names_in_order"};
  seen.on([](const customer_registered& e, order& state) { state.push_back(e.id); });
  projector.add(seen);
  projector.add(cards("cards_read_ahead"));
  order sent;
  {
    auto& tx = this->db->begin_write({});
    cleave::write_context ctx(&tx, cleave::detail::no_meta);
    for (int i = 0; i < 500; ++i) {
      sent.push_back(fmt::format("c{}", i));
      ctx.emit(sent.back(), customer_registered{sent.back(), "N"});
      if (i % 5 == 0)  // (some events the memory view does not handle)
        for (int v = 0; v < 2; ++v) ctx.emit(sent.back(), card_visited{sent.back()});
    }
    tx.commit();
  }
  EXPECT_EQ(settle(projector), 500u + 500u);
  EXPECT_EQ(seen.read([](const order& s) { return s; }), sent);
  EXPECT_EQ(rows(*this->db, "cards_read_ahead"), 500);
  EXPECT_EQ(projector.checkpoint("names_in_order"), this->db->head());
  EXPECT_EQ(projector.checkpoint("cards_read_ahead"), this->db->head());
  // And what comes after, from where each stopped.
  emit_visit(*this->db);
  EXPECT_EQ(settle(projector), 0u);
  EXPECT_EQ(projector.checkpoint("names_in_order"), this->db->head());
  EXPECT_EQ(seen.read([](const order& s) { return s.size(); }), 500u);
}

// Polls `done()` every 2 ms for up to `limit`; returns its last value.
template <class Done>
bool eventually(Done done, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  return done();
}

TYPED_TEST_P(projections, a_reader_that_does_not_project_wakes_on_another_processes_progress) {
  auto other = this->backend.open();  // the projector's own process
  cleave::projector remote(*other, nullptr, slow_poll());
  remote.add(cards("card_far"));
  remote.start();
  // This process writes and reads but does not project (CLEAVE_PROJECTOR=off).
  cleave::projector local(*this->db, nullptr, slow_poll());
  local.add(cards("card_far"));
  cleave::command_bus commands{this->db.get()};
  commands.add(register_handler);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    auto done = commands.send(register_customer{"c" + std::to_string(i), "n"});
    ASSERT_TRUE(done);
    const auto at =
        local.wait_for("card_far", done->position, cleave::clock::now() + std::chrono::seconds(10));
    EXPECT_FALSE(at < done->position);
  }
  // Noticed as the other process's batches commit: polling (every 200 ms) takes about 4 s.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  remote.stop();
}

TYPED_TEST_P(projections, a_parked_wait_holds_no_thread_and_is_called_back_when_it_can_end) {
  cleave::projector projector(*this->db, nullptr, slow_poll());
  projector.add(cards("card_parked"));
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  auto done = commands.send(register_customer{"c1", "Ada"});
  ASSERT_TRUE(done);
  const auto later = cleave::clock::now() + std::chrono::seconds(10);
  std::atomic<int> reached{0};
  ASSERT_TRUE(projector.park(
      {"card_parked"}, cleave::at_least(done->position), later, [&] { ++reached; }, 100));
  // A token past the log's head is called back at once, not at its deadline.
  std::atomic<bool> refused{false};
  const cleave::position_token future(done->position.transaction(),
                                      done->position.position() + 1000);
  ASSERT_TRUE(projector.park(
      {"card_parked"}, cleave::at_least(future), later, [&] { refused = true; }, 100));
  EXPECT_TRUE(eventually([&] { return refused.load(); }));
  // A deadline passing calls back too.
  std::atomic<bool> expired{false};
  ASSERT_TRUE(projector.park(
      {"card_parked"}, cleave::at_least(done->position),
      cleave::clock::now() + std::chrono::milliseconds(100), [&] { expired = true; }, 100));
  EXPECT_TRUE(eventually([&] { return expired.load(); }));
  // No worker runs: the first wait is still parked; the bound refuses another.
  EXPECT_EQ(reached, 0);
  EXPECT_EQ(projector.parked(), 1u);
  EXPECT_FALSE(projector.park(
      {"card_parked"}, cleave::at_least(done->position), later, [] {}, 1));
  // The worker moves the view: called back, once.
  projector.start();
  EXPECT_TRUE(eventually([&] { return reached.load() > 0; }));
  EXPECT_FALSE(projector.checkpoint("card_parked") < done->position);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(reached, 1);
  EXPECT_EQ(projector.parked(), 0u);
  projector.stop();
}

TYPED_TEST_P(projections, a_token_the_log_cannot_have_issued_is_refused_at_once) {
  cleave::projector projector(*this->db, nullptr, slow_poll());
  projector.add(cards("card_future"));
  cleave::command_bus commands{&projector.source()};
  cleave::query_bus queries{this->db.get()};
  commands.add(register_handler);
  queries.use<cleave::read_your_writes>(projector).reads("views.card_by_id", {"card_future"});
  queries.add([](const card_by_id& q, const cleave::read_context& view) {
    return view.one<card>("select id, name, visits from card_future where id = $1", q.id);
  });
  auto done = commands.send(register_customer{"c1", "Ada"});
  ASSERT_TRUE(done);
  const auto p = done->position;
  // Past the head; and (PostgreSQL) a commit LSN past the WAL written so far.
  for (const auto token : {cleave::position_token(p.transaction(), p.position() + 1000),
                           cleave::position_token(p.transaction(), p.position(),
                                                  p.lsn() + (std::uint64_t{1} << 40))}) {
    cleave::request_meta meta;
    meta.consistency = cleave::at_least(token);
    meta.deadline = cleave::clock::now() + std::chrono::seconds(10);
    const auto t0 = std::chrono::steady_clock::now();
    auto refused = queries.ask(card_by_id{"c1"}, meta);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().category, cleave::errc::validation) << refused.error().describe();
    EXPECT_THAT(refused.error().message, testing::HasSubstr("has not issued"));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  }
  // The token the command returned is one: the view is behind (no worker), not the token.
  cleave::request_meta meta;
  meta.consistency = cleave::at_least(p);
  meta.deadline = cleave::clock::now() + std::chrono::milliseconds(200);
  EXPECT_EQ(queries.ask(card_by_id{"c1"}, meta).error().category, cleave::errc::unavailable);
}

REGISTER_TYPED_TEST_SUITE_P(
    projections, a_projection_reads_only_what_it_handles_and_still_reaches_the_head,
    a_long_log_is_read_ahead_and_applied_in_order,
    a_memory_view_reads_only_what_it_handles_and_still_reaches_the_head,
    a_reader_that_does_not_project_wakes_on_another_processes_progress,
    a_parked_wait_holds_no_thread_and_is_called_back_when_it_can_end,
    a_token_the_log_cannot_have_issued_is_refused_at_once,
    bounded_and_strong_reads_wait_for_fresh_views,
    a_set_based_projection_applies_a_batch_in_one_statement,
    a_materialized_view_refreshes_when_a_read_waits_and_records_its_position,
    a_fold_takes_a_whole_batch_and_writes_each_key_once,
    a_memory_view_is_built_from_the_log_and_read_under_a_lock,
    a_projector_in_another_process_wakes_on_commit,
    one_of_two_projectors_leads_and_the_other_takes_over, a_view_in_another_store_is_async_only,
    a_rebuild_swaps_in_a_shadow_and_resumes_after_a_crash,
    a_poison_event_is_parked_after_its_retries_and_can_be_replayed,
    at_least_waits_for_the_view_and_says_when_it_cannot,
    an_inline_projection_changes_its_view_in_the_commands_transaction,
    an_async_projection_catches_up_and_moves_its_checkpoint,
    a_failing_batch_changes_neither_view_nor_checkpoint,
    two_projectors_at_once_apply_each_event_once,
    the_worker_wakes_on_commit_without_waiting_for_its_poll);

}  // namespace views
