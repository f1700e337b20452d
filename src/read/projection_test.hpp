#pragma once
// Projections on any backend (typed tests, instantiated per backend).

#include <atomic>
#include <chrono>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>
#include <cleave/read/consistency.hpp>
#include <cleave/read/projector.hpp>

namespace views {

struct register_customer {
  std::string id;
  std::string name;
};
CLEAVE_COMMAND(register_customer, "views.register_customer", id, name)

struct customer_registered {
  std::string id;
  std::string name;
};
CLEAVE_EVENT(customer_registered, "views.customer_registered", id, name)

struct card {
  std::string id;
  std::string name;
  std::int64_t visits = 0;
};
CLEAVE_RECORD(card, id, name, visits)

inline cleave::result<void> register_handler(const register_customer& c,
                                             cleave::write_context& tx) {
  tx.emit(c.id, customer_registered{c.id, c.name});
  if (c.name == "boom") throw std::runtime_error("after the event");
  return {};
}

inline cleave::projection cards(std::string name) {
  cleave::projection p{std::move(name)};
  p.schema("create table {view}(id text primary key, name text not null, visits bigint not null)")
      .on([](const customer_registered& e, cleave::view_context& v) {
        v.exec("insert into {view}(id, name, visits) values ($1, $2, 0)", e.id, e.name);
      });
  return p;
}

struct card_by_id {
  std::string id;
  using response = card;
};
CLEAVE_QUERY(card_by_id, "views.card_by_id", id)

inline std::int64_t rows(cleave::store& db, const std::string& table) {
  std::int64_t n = -1;
  auto& tx = db.begin_read({});
  tx.query("select count(*) from " + table, {},
           [&](const cleave::row_view& r) { n = std::get<std::int64_t>(r.get(0)); });
  tx.finish();
  return n;
}

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
  EXPECT_EQ(projector.catch_up(2), 5u);
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
  EXPECT_THROW(projector.catch_up(10), std::runtime_error);
  EXPECT_EQ(rows(*this->db, "visits"), 0);
  EXPECT_TRUE(projector.checkpoint("visits").empty());
  fail = false;
  EXPECT_EQ(projector.catch_up(10), 2u);
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
  check.catch_up();
  EXPECT_EQ(rows(*this->db, "tally"), 60);
}

TYPED_TEST_P(projections, the_worker_wakes_on_commit_without_waiting_for_its_poll) {
  cleave::projector projector(*this->db);
  projector.add(cards("card_live"));
  cleave::command_bus commands{&projector.source()};
  commands.add(register_handler);
  projector.start(std::chrono::seconds(30));
  ASSERT_TRUE(commands.send(register_customer{"c1", "Ada"}));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (rows(*this->db, "card_live") == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(rows(*this->db, "card_live"), 1);
  projector.stop();
}

TYPED_TEST_P(projections, at_least_waits_for_the_view_and_says_when_it_cannot) {
  cleave::projector projector(*this->db);
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
  EXPECT_THAT(stale.error().message, testing::HasSubstr("behind the requested"));
  EXPECT_EQ(queries.ask(card_by_id{"c1"}).error().category, cleave::errc::not_found)
      << "an eventual read does not wait";
  // With the worker, read-your-writes holds for every command.
  projector.start(std::chrono::seconds(30));
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

REGISTER_TYPED_TEST_SUITE_P(projections,
                            a_poison_event_is_parked_after_its_retries_and_can_be_replayed,
                            at_least_waits_for_the_view_and_says_when_it_cannot,
                            an_inline_projection_changes_its_view_in_the_commands_transaction,
                            an_async_projection_catches_up_and_moves_its_checkpoint,
                            a_failing_batch_changes_neither_view_nor_checkpoint,
                            two_projectors_at_once_apply_each_event_once,
                            the_worker_wakes_on_commit_without_waiting_for_its_poll);

}  // namespace views
