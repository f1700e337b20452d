#pragma once
// What every backend must do, as typed tests. A backend's test file defines a `backend` type —
//   std::unique_ptr<cleave::store> open(std::chrono::seconds retention = default) const;
// each call opening another handle on the same fresh database, as another process would —
// and instantiates:  INSTANTIATE_TYPED_TEST_SUITE_P(sqlite, store_conformance, sqlite_backend);

#include <algorithm>
#include <atomic>
#include <chrono>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>
#include <cleave/store/group_commit.hpp>
#include <cleave/store/store.hpp>
#include <cleave/store/upcasting.hpp>

namespace conformance {

struct register_customer {
  std::string id;
  std::string name;
};
CLEAVE_COMMAND(register_customer, "conformance.register_customer", id, name)

struct customer_registered {
  std::string id;
  std::string name;
  std::string tier = "standard";
};
CLEAVE_EVENT(customer_registered, "conformance.customer_registered", id, name, tier)

struct customer {
  std::string id;
  std::string name;
  std::optional<std::string> email;
};
CLEAVE_RECORD(customer, id, name, email)

struct customer_by_id {
  std::string id;
  using response = customer;
};
CLEAVE_QUERY(customer_by_id, "conformance.customer_by_id", id)

struct wipe_customers {
  using response = std::int64_t;
};
CLEAVE_QUERY(wipe_customers, "conformance.wipe_customers")

struct deposit {
  std::string account;
  std::int64_t amount = 0;
  using response = std::int64_t;  // the balance after it
};
CLEAVE_COMMAND(deposit, "conformance.deposit", account, amount)

struct withdraw {
  std::string account;
  std::int64_t amount = 0;
  using response = std::int64_t;
};
CLEAVE_COMMAND(withdraw, "conformance.withdraw", account, amount)

struct tick {
  std::int64_t writer = 0;
  std::int64_t seq = 0;
};
CLEAVE_EVENT(tick, "conformance.tick", writer, seq)

inline constexpr cleave::migration schema[] = {
    {1, "customers", "create table customers(id text primary key, name text not null)"},
    {2, "customer email", "alter table customers add column email text"},
    {3, "accounts", "create table accounts(id text primary key, balance bigint not null)"},
};

inline std::atomic<int> deposit_runs{0};
inline std::atomic<bool> fail_next_deposit{false};

inline cleave::result<void> register_customer_handler(const register_customer& c,
                                                      cleave::write_context& tx) {
  if (c.name.empty()) return cleave::rejected("name must not be empty");
  tx.exec("insert into customers(id, name) values ($1, $2)", c.id, c.name);
  tx.emit(c.id, customer_registered{c.id, c.name});
  if (c.name == "boom") throw std::runtime_error("failed after writing");
  return {};
}

inline cleave::result<customer> customer_by_id_handler(const customer_by_id& q,
                                                       const cleave::read_context& db) {
  return db.one<customer>("select id, name, email from customers where id = $1", q.id);
}

inline std::int64_t balance_of(cleave::write_context& tx, const std::string& account) {
  return tx.one<std::int64_t>("select balance from accounts where id = $1", account).value_or(0);
}

inline cleave::result<std::int64_t> deposit_handler(const deposit& c, cleave::write_context& tx) {
  ++deposit_runs;
  if (fail_next_deposit.exchange(false)) throw std::runtime_error("the disk hiccuped");
  tx.exec(
      "insert into accounts(id, balance) values ($1, $2) "
      "on conflict(id) do update set balance = accounts.balance + excluded.balance",
      c.account, c.amount);
  return balance_of(tx, c.account);
}

inline cleave::result<std::int64_t> withdraw_handler(const withdraw& c, cleave::write_context& tx) {
  const auto balance = balance_of(tx, c.account);
  if (balance < c.amount) return cleave::rejected("insufficient funds");
  tx.exec("update accounts set balance = balance - $2 where id = $1", c.account, c.amount);
  return balance - c.amount;
}

// A rule written the plain way: count, then insert when there is room. It holds under concurrent
// commands only if the transaction is serializable.
struct book_slot {
  std::string id;
  std::string slot;
};
CLEAVE_COMMAND(book_slot, "conformance.book_slot", id, slot)

inline constexpr int slot_capacity = 3;

inline constexpr cleave::migration booking_schema[] = {
    {1, "bookings", "create table bookings(id text primary key, slot text not null)"}};

inline cleave::result<void> book_slot_handler(const book_slot& c, cleave::write_context& tx) {
  const auto taken =
      tx.one<std::int64_t>("select count(*) from bookings where slot = $1", c.slot).value_or(0);
  // Widens the window between the read and the write, as a slower handler would.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (taken >= slot_capacity) return cleave::rejected("the slot is full");
  tx.exec("insert into bookings(id, slot) values ($1, $2)", c.id, c.slot);
  return {};
}

// A row (when `with_row`) and an event on stream `id`, whose version before it is expected to be
// `expect`: with another the append fails (on PostgreSQL only when the insert is answered);
// then `more` events after it.
struct stamp {
  std::string id;
  std::int64_t expect = 0;
  bool with_row = true;
  std::int64_t more = 0;
};
CLEAVE_COMMAND(stamp, "conformance.stamp", id, expect, with_row, more)

inline cleave::result<void> stamp_handler(const stamp& c, cleave::write_context& tx) {
  if (c.with_row) tx.exec("insert into customers(id, name) values ($1, 'stamped')", c.id);
  tx.emit(c.id, tick{0, 0}, static_cast<std::uint64_t>(c.expect));
  for (std::int64_t i = 1; i <= c.more; ++i) tx.emit(c.id, tick{0, i});
  return {};
}

struct run_sql {
  std::string sql;
};
CLEAVE_COMMAND(run_sql, "conformance.run_sql", sql)

inline cleave::result<void> run_sql_handler(const run_sql& c, cleave::write_context& tx) {
  tx.exec(c.sql);
  return {};
}

inline cleave::request_meta with_id(std::string id) {
  cleave::request_meta meta;
  meta.command_id = std::move(id);
  return meta;
}

inline std::int64_t count_rows(cleave::store& db, std::string_view table) {
  std::int64_t n = -1;
  auto& tx = db.begin_read({});
  const std::string sql = "select count(*) from " + std::string(table);
  tx.query(sql, {}, [&](const cleave::row_view& r) { n = std::get<std::int64_t>(r.get(0)); });
  tx.finish();
  return n;
}

template <class Backend>
struct store_conformance : testing::Test {
  Backend backend;
  std::unique_ptr<cleave::store> db = backend.open();
  cleave::command_bus commands{db.get()};
  cleave::query_bus queries{db.get()};

  void SetUp() override {
    db->migrate("app", schema);
    commands.add(register_customer_handler);
    commands.add(deposit_handler);
    commands.add(withdraw_handler);
    queries.add(customer_by_id_handler);
    deposit_runs = 0;
  }
};

TYPED_TEST_SUITE_P(store_conformance);

using cleave::errc;
using testing::HasSubstr;

TYPED_TEST_P(store_conformance, a_command_commits_its_state_and_its_event_together) {
  cleave::request_meta meta;
  meta.correlation_id = "req-1";
  meta.command_id = "cmd-1";
  auto done = this->commands.send(register_customer{"c1", "Ada"}, meta);
  ASSERT_TRUE(done) << done.error().describe();
  auto card = this->queries.ask(customer_by_id{"c1"});
  ASSERT_TRUE(card) << card.error().describe();
  EXPECT_EQ(card->name, "Ada");
  EXPECT_FALSE(card->email);
  auto events = this->db->read_events({}, 10);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, "conformance.customer_registered");
  EXPECT_EQ(events[0].stream, "c1");
  EXPECT_EQ(events[0].stream_version, 1u);
  EXPECT_EQ(events[0].correlation_id, "req-1");
  EXPECT_EQ(events[0].command_id, "cmd-1");
  EXPECT_EQ(events[0].payload.value()["name"], "Ada");
  // Recorded just now, as Unix milliseconds (a few seconds' slack for a slow machine).
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  EXPECT_NEAR(static_cast<double>(events[0].recorded_at_ms), static_cast<double>(now_ms), 5000.0);
  EXPECT_EQ(events[0].position, done->position);
  EXPECT_EQ(this->db->head(), done->position);
}

TYPED_TEST_P(store_conformance, a_rejected_or_failing_command_leaves_nothing_behind) {
  auto refused = this->commands.send(register_customer{"c1", ""});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().category, errc::rejected);
  auto failed = this->commands.send(register_customer{"c2", "boom"});
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().category, errc::internal);
  EXPECT_EQ(count_rows(*this->db, "customers"), 0);
  EXPECT_EQ(count_rows(*this->db, "cleave_events"), 0);
  EXPECT_TRUE(this->db->head().empty());
  EXPECT_TRUE(this->commands.send(register_customer{"c3", "Grace"}));  // the writer is free again
}

TYPED_TEST_P(store_conformance, a_unique_violation_is_a_conflict) {
  ASSERT_TRUE(this->commands.send(register_customer{"c1", "Ada"}));
  auto again = this->commands.send(register_customer{"c1", "Ada"});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().category, errc::conflict);
  EXPECT_EQ(count_rows(*this->db, "cleave_events"), 1);
}

TYPED_TEST_P(store_conformance, a_query_cannot_write_even_through_raw_sql) {
  ASSERT_TRUE(this->commands.send(register_customer{"c1", "Ada"}));
  this->queries.add(
      [](const wipe_customers&, const cleave::read_context& ctx) -> cleave::result<std::int64_t> {
        return static_cast<std::int64_t>(
            ctx.many<std::string>("delete from customers returning id").size());
      });
  auto r = this->queries.ask(wipe_customers{});
  ASSERT_FALSE(r);
  // The query's own fault, not the caller's: 403 is kept for a missing role.
  EXPECT_EQ(r.error().category, errc::internal);
  EXPECT_EQ(count_rows(*this->db, "customers"), 1);
}

TYPED_TEST_P(store_conformance, placeholders_bind_by_number_in_any_order) {
  ASSERT_TRUE(this->commands.send(register_customer{"c1", "Ada"}));
  auto& tx = this->db->begin_read({});
  std::string name;
  const cleave::sql_value params[] = {std::string_view("Ada"), std::string_view("c1")};
  tx.query("select name from customers where id = $2 and name = $1", params,
           [&](const cleave::row_view& r) { name = std::get<std::string_view>(r.get(0)); });
  tx.finish();
  EXPECT_EQ(name, "Ada");
}

TYPED_TEST_P(store_conformance, expected_stream_version_guards_concurrent_changes) {
  auto& w = this->db->begin_write({});
  cleave::write_context ctx(&w, cleave::detail::no_meta);
  EXPECT_EQ(ctx.emit("s1", customer_registered{"s1", "a"}, 0), 1u);
  EXPECT_EQ(ctx.emit("s1", customer_registered{"s1", "b"}, 1), 2u);
  ctx.emit("s2", customer_registered{"s2", "c"});
  try {
    ctx.emit("s1", customer_registered{"s1", "late"}, 1);
    ADD_FAILURE() << "a stale expected version was accepted";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, errc::conflict);
    EXPECT_THAT(e.error().message, HasSubstr("stream 's1' is at version 2, expected 1"));
  }
  w.commit();
  const auto log = this->db->read_events({}, 100);
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[2].stream, "s2");
  EXPECT_EQ(log[2].stream_version, 1u);
}

// A stale expected version that this transaction could not check when the event was emitted
// (nothing had read the stream) is still a conflict: the command fails and nothing it did stays.
TYPED_TEST_P(store_conformance, a_stale_expected_version_fails_the_command_on_every_backend) {
  this->db->migrate("bookings", booking_schema);
  auto& first = this->db->begin_write({});
  cleave::write_context ctx(&first, cleave::detail::no_meta);
  ctx.emit("s", customer_registered{"s", "a"});
  first.commit();
  auto& stale = this->db->begin_write({});
  cleave::write_context late(&stale, cleave::detail::no_meta);
  try {
    late.exec("insert into bookings(id, slot) values ('b', 'x')");
    late.emit("s", customer_registered{"s", "b"}, 0);
    stale.commit();
    ADD_FAILURE() << "a stale expected version was accepted";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, errc::conflict);
    EXPECT_THAT(e.error().message, HasSubstr("stream 's' is at version 1, expected 0"));
  }
  EXPECT_EQ(count_rows(*this->db, "bookings"), 0);
  EXPECT_EQ(count_rows(*this->db, "cleave_events"), 1);
}

TYPED_TEST_P(store_conformance, migrations_apply_once_in_order_and_report_failures) {
  EXPECT_EQ(this->db->applied_migrations("app"), (std::vector<int>{1, 2, 3}));
  this->db->migrate("app", schema);
  EXPECT_EQ(this->db->applied_migrations("app"), (std::vector<int>{1, 2, 3}));
  // (Each backend may add steps of its own after the five they share.)
  const auto own = this->db->applied_migrations("cleave");
  ASSERT_GE(own.size(), 5u);
  EXPECT_EQ(std::vector<int>(own.begin(), own.begin() + 5), (std::vector<int>{1, 2, 3, 4, 5}));
  constexpr cleave::migration broken[] = {{4, "typo", "create tabel nope(x integer)"}};
  try {
    this->db->migrate("app", broken);
    ADD_FAILURE() << "a broken migration was accepted";
  } catch (const cleave::error_exception& e) {
    EXPECT_THAT(e.error().message, HasSubstr("migration 4 'typo' of app"));
  }
  EXPECT_EQ(this->db->applied_migrations("app"), (std::vector<int>{1, 2, 3}));
  EXPECT_TRUE(this->commands.send(register_customer{"c1", "Ada"}));
}

TYPED_TEST_P(store_conformance, two_processes_migrating_at_once_apply_each_step_once) {
  constexpr cleave::migration steps[] = {
      {1, "a", "create table a(x integer)"},
      {2, "b", "create table b(x integer)"},
      {3, "c", "insert into a values (1)"},
  };
  std::vector<std::thread> racers;
  for (int i = 0; i < 4; ++i)
    racers.emplace_back([&] { this->backend.open()->migrate("racing", steps); });
  for (auto& t : racers) t.join();
  EXPECT_EQ(this->db->applied_migrations("racing"), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(count_rows(*this->db, "a"), 1);
}

// A process that starts on a migrated database while another holds the writer (a busy one, on
// SQLite) starts at once: finding every step applied takes a read, not the writer.
TYPED_TEST_P(store_conformance, a_migrated_database_opens_while_another_process_writes) {
  auto& held = this->db->begin_write({});
  held.exec("insert into customers(id, name) values ('held', 'h')", {});
  try {
    auto other = this->backend.open();  // migrates cleave's own steps
    other->migrate("app", schema);
    EXPECT_EQ(other->applied_migrations("app").size(), std::size(schema));
  } catch (const cleave::error_exception& e) {
    ADD_FAILURE() << e.error().describe();  // SQLite, before: "the database is busy"
  }
  held.rollback();
}

TYPED_TEST_P(store_conformance, old_events_decode_with_defaults_and_upcasters) {
  {
    // Written long ago: a renamed type, a member since dropped, no `tier`.
    auto& w = this->db->begin_write({});
    const cleave::sql_value row[] = {
        std::string_view("conformance.customer_signed_up"),
        std::string_view(R"({"id":"c9","full_name":"Old","legacy":1})")};
    w.exec(
        "insert into cleave_events(stream, stream_version, type, payload) values ('c9', 1, $1, $2)",
        row);
    w.commit();
  }
  cleave::upcasters rewrites;
  rewrites.add("conformance.customer_signed_up", "conformance.customer_registered",
               [](cleave::json& p) {
                 p["name"] = p["full_name"];
                 p.erase("full_name");
               });
  auto events = this->db->read_events({}, 10);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_FALSE(cleave::decode_event<customer_registered>(events[0]));
  auto e = cleave::decode_event<customer_registered>(events[0], &rewrites);
  ASSERT_TRUE(e) << e.error().describe();
  EXPECT_EQ(e->name, "Old");
  EXPECT_EQ(e->tier, "standard");
}

TYPED_TEST_P(store_conformance, a_retried_success_returns_the_first_outcome_and_has_one_effect) {
  auto first = this->commands.send(deposit{"a", 10}, with_id("d-1"));
  auto retry = this->commands.send(deposit{"a", 10}, with_id("d-1"));
  ASSERT_TRUE(first && retry);
  EXPECT_EQ(first->value, 10);
  EXPECT_EQ(retry->value, 10);
  EXPECT_EQ(retry->position, first->position);
  EXPECT_EQ(deposit_runs, 1);
  EXPECT_EQ(this->commands.send(deposit{"a", 10}).value().value, 20);
  EXPECT_EQ(this->commands.send(deposit{"a", 10}, with_id("d-2")).value().value, 30);
}

TYPED_TEST_P(store_conformance, a_retried_rejection_stays_rejected_even_when_it_would_now_succeed) {
  auto first = this->commands.send(withdraw{"a", 5}, with_id("w-1"));
  ASSERT_FALSE(first);
  EXPECT_EQ(first.error().category, errc::rejected);
  ASSERT_TRUE(this->commands.send(deposit{"a", 100}));
  auto retry = this->commands.send(withdraw{"a", 5}, with_id("w-1"));
  ASSERT_FALSE(retry);
  EXPECT_EQ(retry.error().message, "insufficient funds");
}

TYPED_TEST_P(store_conformance, racing_retries_of_a_rejection_all_answer_the_one_remembered) {
  // Each id is sent by several threads at once while the withdrawal would fail; afterwards the
  // account has money, and every id still answers its rejection: it was remembered each time.
  // (Deposits to other accounts meanwhile, as a service would have.)
  constexpr int ids = 24, racers = 6, depositors = 4;
  std::vector<std::thread> threads;
  std::atomic<int> rejected{0};
  std::atomic<bool> racing{true};
  for (int r = 0; r < racers; ++r)
    threads.emplace_back([&] {
      for (int i = 0; i < ids; ++i) {
        auto out = this->commands.send(withdraw{"race", 5}, with_id(fmt::format("race-{}", i)));
        if (!out && out.error().category == errc::rejected) ++rejected;
      }
    });
  std::vector<std::thread> others;
  for (int d = 0; d < depositors; ++d)
    others.emplace_back([&, d] {
      for (int i = 0; racing; ++i)
        (void)this->commands.send(deposit{fmt::format("other-{}", d), 1},
                                  with_id(fmt::format("other-{}-{}", d, i)));
    });
  for (auto& t : threads) t.join();
  racing = false;
  for (auto& t : others) t.join();
  EXPECT_EQ(rejected.load(), ids * racers);
  ASSERT_TRUE(this->commands.send(deposit{"race", 100}));
  for (int i = 0; i < ids; ++i) {
    auto retry = this->commands.send(withdraw{"race", 5}, with_id(fmt::format("race-{}", i)));
    ASSERT_FALSE(retry) << "id race-" << i << " was not remembered";
    EXPECT_EQ(retry.error().message, "insufficient funds");
  }
}

TYPED_TEST_P(store_conformance, a_transient_failure_is_not_remembered) {
  fail_next_deposit = true;
  auto first = this->commands.send(deposit{"a", 7}, with_id("d-9"));
  ASSERT_FALSE(first);
  EXPECT_EQ(first.error().category, errc::internal);
  auto retry = this->commands.send(deposit{"a", 7}, with_id("d-9"));
  ASSERT_TRUE(retry) << retry.error().describe();
  EXPECT_EQ(retry->value, 7);
}

TYPED_TEST_P(store_conformance, reusing_an_id_for_another_command_is_refused) {
  ASSERT_TRUE(this->commands.send(deposit{"a", 10}, with_id("x-1")));
  auto other = this->commands.send(withdraw{"a", 1}, with_id("x-1"));
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().category, errc::idempotency_key_reused);
  EXPECT_THAT(other.error().message, HasSubstr("already used for 'conformance.deposit'"));
}

TYPED_TEST_P(store_conformance, reusing_an_id_with_another_payload_is_refused_and_has_no_effect) {
  ASSERT_TRUE(this->commands.send(deposit{"a", 10}, with_id("p-1")));
  auto other = this->commands.send(deposit{"a", 11}, with_id("p-1"));
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().category, errc::idempotency_key_reused);
  EXPECT_THAT(other.error().message, HasSubstr("another payload"));
  EXPECT_EQ(deposit_runs, 1);
  // A remembered refusal is guarded the same way, and the first payload still replays.
  ASSERT_FALSE(this->commands.send(withdraw{"a", 50}, with_id("p-2")));
  auto changed = this->commands.send(withdraw{"a", 5}, with_id("p-2"));
  ASSERT_FALSE(changed);
  EXPECT_EQ(changed.error().category, errc::idempotency_key_reused);
  auto same = this->commands.send(deposit{"a", 10}, with_id("p-1"));
  ASSERT_TRUE(same) << same.error().describe();
  EXPECT_EQ(same->value, 10);
  EXPECT_EQ(this->commands.send(deposit{"a", 0}).value().value, 10);
}

TYPED_TEST_P(store_conformance, a_replay_names_the_request_that_ran_the_command) {
  auto first = with_id("c-1");
  first.correlation_id = "first-request";
  const auto body = cleave::to_json(deposit{"a", 1});
  std::optional<std::string> replay_of;
  ASSERT_TRUE(this->commands.send_json("conformance.deposit", body, first, &replay_of));
  EXPECT_FALSE(replay_of);
  auto retry = with_id("c-1");
  retry.correlation_id = "second-request";
  ASSERT_TRUE(this->commands.send_json("conformance.deposit", body, retry, &replay_of));
  EXPECT_EQ(replay_of, "first-request");
}

TYPED_TEST_P(store_conformance, outcomes_expire_after_the_retention) {
  auto forgetful_store = this->backend.open(std::chrono::seconds(0));
  cleave::command_bus forgetful{forgetful_store.get()};
  forgetful.add(deposit_handler);
  ASSERT_TRUE(forgetful.send(deposit{"b", 1}, with_id("e-1")));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(forgetful.send(deposit{"b", 1}, with_id("e-1")).value().value, 2);
  EXPECT_EQ(deposit_runs, 2);
}

TYPED_TEST_P(store_conformance, racing_retries_from_two_processes_have_exactly_one_effect) {
  constexpr int racers = 4;
  constexpr int rounds = 25;
  std::vector<std::thread> threads;
  std::vector<std::vector<std::int64_t>> seen(racers);
  for (int r = 0; r < racers; ++r) {
    threads.emplace_back([&, r] {
      auto mine = this->backend.open();
      cleave::command_bus bus{mine.get()};
      bus.add(deposit_handler);
      for (int i = 0; i < rounds; ++i) {
        auto done = bus.send(deposit{"race", 1}, with_id("race-" + std::to_string(i)));
        seen[static_cast<std::size_t>(r)].push_back(done ? done->value : -1);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < rounds; ++i)
    for (int r = 1; r < racers; ++r)
      EXPECT_EQ(seen[static_cast<std::size_t>(r)][static_cast<std::size_t>(i)],
                seen[0][static_cast<std::size_t>(i)])
          << "racer " << r << " got another outcome in round " << i;
  EXPECT_EQ(this->commands.send(deposit{"race", 0}).value().value, rounds);
}

// Sends six bookings of one slot at once, each on a thread of its own, through `commands`.
inline void book_concurrently(cleave::command_bus& commands, cleave::store& db) {
  constexpr int clients = 6;
  std::latch start(clients);
  std::vector<cleave::result<cleave::sent<void>>> outcomes(clients);
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i)
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      outcomes[static_cast<std::size_t>(i)] =
          commands.send(book_slot{"b" + std::to_string(i), "monday-9am"});
    });
  for (auto& t : threads) t.join();
  int booked = 0, refused = 0;
  for (const auto& o : outcomes) {
    if (o)
      ++booked;
    else if (o.error().category == errc::rejected)
      ++refused;
    else
      ADD_FAILURE() << "neither booked nor refused: " << o.error().describe();
  }
  EXPECT_EQ(booked, slot_capacity);
  EXPECT_EQ(refused, clients - slot_capacity);
  EXPECT_EQ(count_rows(db, "bookings"), slot_capacity);
}

TYPED_TEST_P(store_conformance, a_count_then_insert_rule_holds_under_concurrent_commands) {
  this->db->migrate("bookings", booking_schema);
  this->commands.add(book_slot_handler);
  book_concurrently(this->commands, *this->db);
}

TYPED_TEST_P(store_conformance, the_rule_holds_under_group_commit_too) {
  this->db->migrate("bookings", booking_schema);
  // Two lanes (two shared transactions side by side) where the backend runs writers at once.
  cleave::group_commit grouped(*this->db, 32,
                               std::min<std::size_t>(2, this->db->concurrent_writers()));
  cleave::command_bus grouped_commands{&grouped};
  grouped_commands.add(book_slot_handler);
  book_concurrently(grouped_commands, *this->db);
}

// Under group commit a member's appends may fail after its handler returned (PostgreSQL holds
// them until an answer is needed, and sends them when it holds a thousand): that member fails
// alone, its row rolled back with it, the others keep theirs, and each kept one's position is
// its own last event's.
TYPED_TEST_P(store_conformance, a_member_whose_appends_fail_fails_alone_under_group_commit) {
  cleave::group_commit grouped(*this->db, 32, 1);
  cleave::command_bus grouped_commands{&grouped};
  grouped_commands.add(stamp_handler);
  constexpr int clients = 8, each = 24;
  std::latch start(clients);
  struct sent_stamp {
    std::string id;
    bool good = false;
    cleave::result<cleave::sent<void>> outcome;
  };
  std::vector<std::vector<sent_stamp>> sent(clients);
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      start.arrive_and_wait();
      for (int i = 0; i < each; ++i) {
        // Every third fails; half of them, and half of the others, write no row (no round trip
        // of their own); every eighth appends 150 events more.
        const bool good = i % 3 != 0, with_row = (i / 3) % 2 == 0;
        const auto id = fmt::format("s{}-{}", c, i);
        auto outcome =
            grouped_commands.send(stamp{id, good ? 0 : 5, with_row, i % 8 == 1 ? 150 : 0});
        sent[static_cast<std::size_t>(c)].push_back({id, good, std::move(outcome)});
      }
    });
  for (auto& t : threads) t.join();
  std::map<std::string, std::uint64_t> position_of;
  for (const auto& e : this->db->read_events({}, 100'000))
    position_of[e.stream] = e.position.position();  // (the last one's)
  int good = 0, rows = 0;
  for (const auto& mine : sent)
    for (const auto& s : mine) {
      if (!s.good) {
        ASSERT_FALSE(s.outcome) << s.id;
        EXPECT_EQ(s.outcome.error().category, errc::conflict) << s.id;
        EXPECT_FALSE(position_of.contains(s.id)) << s.id;
        continue;
      }
      ASSERT_TRUE(s.outcome) << s.id << ": " << s.outcome.error().describe();
      ++good;
      rows += (std::stoi(s.id.substr(s.id.find('-') + 1)) / 3) % 2 == 0;
      ASSERT_TRUE(position_of.contains(s.id)) << s.id;
      EXPECT_EQ(s.outcome->position.position(), position_of[s.id]) << s.id;
    }
  EXPECT_EQ(position_of.size(), static_cast<std::size_t>(good));
  EXPECT_EQ(count_rows(*this->db, "customers"), rows);
  EXPECT_EQ(grouped.commands_committed(), static_cast<std::uint64_t>(good));
  EXPECT_LT(grouped.groups_committed(), grouped.commands_committed()) << "no commit was shared";
}

// Group commit runs each member in a savepoint: a member rolled back takes its events with it,
// and the next one's append to the same stream gets the next version, without a gap.
TYPED_TEST_P(store_conformance, a_savepoint_rolled_back_takes_its_events_with_it) {
  auto& tx = this->db->begin_write({});
  cleave::write_context ctx(&tx, cleave::detail::no_meta);
  ctx.emit("s", tick{1, 1});
  tx.exec("savepoint member", {});
  ctx.emit("s", tick{2, 1});
  EXPECT_EQ(ctx.emit("t", tick{2, 2}, 0), 1u);
  tx.exec("rollback to savepoint member", {});
  tx.exec("release savepoint member", {});
  EXPECT_EQ(ctx.emit("s", tick{3, 1}, 1), 2u);
  tx.commit();
  const auto log = this->db->read_events({}, 100);
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[0].stream_version, 1u);
  EXPECT_EQ(log[1].stream_version, 2u);
  EXPECT_EQ(log[1].payload.value()["writer"], 3);
}

TYPED_TEST_P(store_conformance, one_statement_per_exec) {
  this->db->migrate("bookings", booking_schema);
  this->commands.add(run_sql_handler);
  auto two = this->commands.send(run_sql{
      "insert into bookings(id, slot) values ('a', 's'); insert into bookings(id, slot) values "
      "('b', 's')"});
  ASSERT_FALSE(two);
  EXPECT_EQ(two.error().category, errc::internal);
  EXPECT_THAT(two.error().message, HasSubstr("one statement per exec"));
  EXPECT_THAT(two.error().message, testing::Not(HasSubstr("insert")));
  EXPECT_EQ(count_rows(*this->db, "bookings"), 0);
  // A closing semicolon, blanks and comments are no second statement.
  EXPECT_TRUE(this->commands.send(
      run_sql{"insert into bookings(id, slot) values ('c', 's');  -- the only one\n"}));
  EXPECT_EQ(count_rows(*this->db, "bookings"), 1);
  // Scripts (migrations, view schemas) still run several.
  constexpr cleave::migration two_steps[] = {
      {1, "two tables", "create table t1(x integer); create table t2(x integer);"}};
  this->db->migrate("scripted", two_steps);
  EXPECT_EQ(count_rows(*this->db, "t2"), 0);
  auto& tx = this->db->begin_write({});
  tx.script("create table t3(x integer); insert into t3 values (1); insert into t3 values (2)");
  tx.commit();
  EXPECT_EQ(count_rows(*this->db, "t3"), 2);
}

TYPED_TEST_P(store_conformance, a_unique_violation_says_so_without_sql_names_or_values) {
  ASSERT_TRUE(this->commands.send(register_customer{"ada-1815", "Ada"}));
  auto again = this->commands.send(register_customer{"ada-1815", "Ada"});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().category, errc::conflict);
  EXPECT_EQ(again.error().message, "a row with this key already exists");
  EXPECT_TRUE(again.error().fields.empty());
}

TYPED_TEST_P(store_conformance, a_nul_in_a_message_is_refused_at_decoding) {
  auto nul = this->commands.send_json("conformance.register_customer",
                                      cleave::json{{"id", "c1"}, {"name", std::string("A\0B", 3)}});
  ASSERT_FALSE(nul);
  EXPECT_EQ(nul.error().category, errc::validation);
  ASSERT_EQ(nul.error().fields.size(), 1u);
  EXPECT_EQ(nul.error().fields[0].path, "name");
  auto asked = this->queries.ask_json("conformance.customer_by_id",
                                      cleave::json{{"id", std::string("c\0", 2)}});
  ASSERT_FALSE(asked);
  EXPECT_EQ(asked.error().category, errc::validation);
  EXPECT_EQ(count_rows(*this->db, "customers"), 0);
}

// A NUL a handler builds itself (no decoding in between) is refused by the store on every backend
// — SQLite could store it, PostgreSQL cannot — and leaves nothing behind.
TYPED_TEST_P(store_conformance, a_nul_built_by_a_handler_is_refused_by_every_backend) {
  auto built = this->commands.send(register_customer{"c2", std::string("A\0B", 3)});
  ASSERT_FALSE(built);
  EXPECT_EQ(built.error().category, errc::validation);
  EXPECT_EQ(count_rows(*this->db, "customers"), 0);
  auto& tx = this->db->begin_write({});
  cleave::write_context ctx(&tx, cleave::detail::no_meta);
  try {
    ctx.emit(customer_registered{"c3", std::string("A\0B", 3)});
    ADD_FAILURE() << "an event holding U+0000 was appended";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, errc::validation);
  }
  tx.rollback();
  EXPECT_EQ(count_rows(*this->db, "cleave_events"), 0);
}

TYPED_TEST_P(store_conformance, distance_counts_the_events_after_a_position) {
  EXPECT_EQ(this->db->distance({}).events, 0u);
  auto first = this->commands.send(register_customer{"c1", "Ada"});
  ASSERT_TRUE(first);
  ASSERT_TRUE(this->commands.send(register_customer{"c2", "Grace"}));
  const auto all = this->db->distance({});
  EXPECT_EQ(all.events, 2u);
  EXPECT_GT(all.oldest_recorded_at_ms, 1'600'000'000'000);
  EXPECT_EQ(this->db->distance(first->position).events, 1u);
  EXPECT_EQ(this->db->distance(this->db->head()).events, 0u);
}

// A read transaction is one snapshot on every backend: a commit made while it is open is not in
// its second statement, and head_in() names the newest event it sees, not the log's head.
TYPED_TEST_P(store_conformance, a_read_sees_one_snapshot_and_head_in_names_what_it_saw) {
  const auto first = this->commands.send(register_customer{"c1", "Ada"});
  ASSERT_TRUE(first);
  cleave::position_token seen;
  std::int64_t before = -1, after = -1;
  {
    cleave::read_scope tx(*this->db, {}, cleave::strong());
    const cleave::read_context ctx(&*tx, {});
    before = ctx.one<std::int64_t>("select count(*) from cleave_events").value_or(-1);
    ASSERT_TRUE(this->commands.send(register_customer{"c2", "Grace"}));  // commits meanwhile
    after = ctx.one<std::int64_t>("select count(*) from cleave_events").value_or(-1);
    seen = this->db->head_in(*tx);
  }
  EXPECT_EQ(before, 1);
  EXPECT_EQ(after, 1);
  EXPECT_EQ(seen.transaction(), first->position.transaction());
  EXPECT_EQ(seen.position(), first->position.position());
  EXPECT_LT(first->position.position(), this->db->head().position());  // (c2 did commit)
}

TYPED_TEST_P(store_conformance, a_span_counts_what_read_events_returns) {
  // Twelve events with gaps: each failed command's append rolls back (on PostgreSQL its position
  // is used up), so positions alone overstate how many events lie between two of them.
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(this->commands.send(register_customer{"c" + std::to_string(i), "n"}));
    for (int k = 0; i % 4 == 1 && k < 5; ++k)
      ASSERT_FALSE(
          this->commands.send(register_customer{"x" + std::to_string(i * 10 + k), "boom"}));
  }
  const auto all = this->db->read_events({}, 100);
  ASSERT_EQ(all.size(), 12u);
  std::vector<cleave::position_token> afters{{}};
  for (const auto& e : all) afters.push_back(e.position);
  for (const auto& after : afters)
    for (const std::size_t limit : {1, 2, 3, 5, 8, 13, 100})
      for (const auto& until : {cleave::position_token{}, all[6].position, all.back().position}) {
        std::vector<cleave::position_token> in_span;
        for (const auto& e : all)
          if (after < e.position && (until.empty() || !(until < e.position)) &&
              in_span.size() < limit)
            in_span.push_back(e.position);
        const auto span = this->db->read_span(after, limit, until);
        const auto where = "after " + after.to_string() + ", limit " + std::to_string(limit) +
                           ", until " + until.to_string();
        EXPECT_EQ(span.events, in_span.size()) << where;
        EXPECT_EQ(span.last, in_span.empty() ? cleave::position_token{} : in_span.back()) << where;
      }
}

TYPED_TEST_P(store_conformance, a_read_of_some_types_skips_the_others_and_says_how_far_it_got) {
  auto emit_ticks = [&](int n) {
    auto& tx = this->db->begin_write({});
    cleave::write_context ctx(&tx, cleave::detail::no_meta);
    for (int i = 0; i < n; ++i) ctx.emit(tick{0, i});
    tx.commit();
  };
  ASSERT_TRUE(this->commands.send(register_customer{"c1", "Ada"}));
  emit_ticks(3);
  ASSERT_TRUE(this->commands.send(register_customer{"c2", "Grace"}));
  emit_ticks(2);
  const auto all = this->db->read_events({}, 100);
  ASSERT_EQ(all.size(), 7u);
  const std::vector<std::string> customers{"conformance.customer_registered"};
  std::vector<cleave::stored_event> out;
  // Fewer than the limit: all of them, and the log read to its end.
  auto through = this->db->read_events_into({}, 10, out, customers);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].payload.value()["id"], "c1");
  EXPECT_EQ(out[1].payload.value()["id"], "c2");
  EXPECT_EQ(out[1].type, "conformance.customer_registered");
  EXPECT_EQ(through, all.back().position);
  // Of two types: each event with its own.
  const std::vector<std::string> both{"conformance.tick", "conformance.customer_registered"};
  EXPECT_EQ(this->db->read_events_into({}, 100, out, both), all.back().position);
  ASSERT_EQ(out.size(), all.size());
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(out[i].type, all[i].type) << i;
  // As many as the limit: read as far as the last of them.
  through = this->db->read_events_into({}, 1, out, customers);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(through, all[0].position);
  through = this->db->read_events_into(through, 1, out, customers);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].position, all[4].position);
  EXPECT_EQ(through, all[4].position);
  // None left of the type, ticks after: read past them.
  through = this->db->read_events_into(through, 1, out, customers);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(through, all.back().position);
  // Nothing new: where it started.
  EXPECT_EQ(this->db->read_events_into(through, 10, out, customers), through);
  EXPECT_TRUE(out.empty());
  // No types: every event.
  EXPECT_EQ(this->db->read_events_into({}, 100, out, {}), all.back().position);
  ASSERT_EQ(out.size(), 7u);
  EXPECT_EQ(out[6].type, "conformance.tick");
  // The payload alone, into events that held whole ones: the envelope is left empty.
  ASSERT_FALSE(out[0].stream.empty());
  EXPECT_EQ(this->db->read_events_into({}, 10, out, customers, cleave::event_fields::payload),
            all.back().position);
  ASSERT_EQ(out.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const auto& whole = all[i == 0 ? 0 : 4];
    EXPECT_EQ(out[i].position, whole.position);
    EXPECT_EQ(out[i].type, whole.type);
    EXPECT_EQ(out[i].payload, whole.payload);
    EXPECT_TRUE(out[i].stream.empty());
    EXPECT_EQ(out[i].stream_version, 0u);
    EXPECT_TRUE(out[i].command_id.empty());
    EXPECT_TRUE(out[i].correlation_id.empty());
    EXPECT_EQ(out[i].recorded_at_ms, 0);
  }
  EXPECT_EQ(this->db->read_events_into({}, 100, out, {}, cleave::event_fields::payload),
            all.back().position);
  ASSERT_EQ(out.size(), 7u);
  EXPECT_EQ(out[6].type, "conformance.tick");
  EXPECT_TRUE(out[6].stream.empty() && out[0].recorded_at_ms == 0);
}

TYPED_TEST_P(store_conformance, a_commit_in_another_process_wakes_a_watch) {
  auto other = this->backend.open();
  cleave::command_bus other_commands{other.get()};
  other_commands.add(register_customer_handler);
  auto watch = this->db->watch_commits();
  // Nothing committed: the wait runs to its deadline.
  const auto t0 = cleave::clock::now();
  watch->wait_until(t0 + std::chrono::milliseconds(100));
  EXPECT_GE(cleave::clock::now() - t0, std::chrono::milliseconds(100));
  // A commit through another handle ends the wait well before a 10 s deadline.
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(other_commands.send(register_customer{"c1", "Ada"}));
  });
  const auto t1 = cleave::clock::now();
  watch->wait_until(t1 + std::chrono::seconds(10));
  EXPECT_LT(cleave::clock::now() - t1, std::chrono::seconds(5));
  writer.join();
  // interrupt() ends a wait from another thread.
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    watch->interrupt();
  });
  const auto t2 = cleave::clock::now();
  watch->wait_until(t2 + std::chrono::seconds(10));
  EXPECT_LT(cleave::clock::now() - t2, std::chrono::seconds(5));
  stopper.join();
}

TYPED_TEST_P(store_conformance, a_lease_has_one_holder_until_it_is_released) {
  auto other = this->backend.open();
  auto mine = this->db->try_lease("projector");
  ASSERT_TRUE(mine);
  EXPECT_TRUE(mine->held());
  EXPECT_FALSE(other->try_lease("projector"));
  EXPECT_TRUE(other->try_lease("another name"));
  mine.reset();
  auto theirs = other->try_lease("projector");
  EXPECT_TRUE(theirs);
}

REGISTER_TYPED_TEST_SUITE_P(
    store_conformance, distance_counts_the_events_after_a_position,
    a_read_sees_one_snapshot_and_head_in_names_what_it_saw, a_span_counts_what_read_events_returns,
    a_read_of_some_types_skips_the_others_and_says_how_far_it_got,
    a_commit_in_another_process_wakes_a_watch, a_lease_has_one_holder_until_it_is_released,
    a_command_commits_its_state_and_its_event_together,
    a_rejected_or_failing_command_leaves_nothing_behind, a_unique_violation_is_a_conflict,
    a_query_cannot_write_even_through_raw_sql, placeholders_bind_by_number_in_any_order,
    expected_stream_version_guards_concurrent_changes,
    a_stale_expected_version_fails_the_command_on_every_backend,
    migrations_apply_once_in_order_and_report_failures,
    two_processes_migrating_at_once_apply_each_step_once,
    a_migrated_database_opens_while_another_process_writes,
    old_events_decode_with_defaults_and_upcasters,
    a_retried_success_returns_the_first_outcome_and_has_one_effect,
    a_retried_rejection_stays_rejected_even_when_it_would_now_succeed,
    a_transient_failure_is_not_remembered, reusing_an_id_for_another_command_is_refused,
    racing_retries_of_a_rejection_all_answer_the_one_remembered,
    outcomes_expire_after_the_retention, racing_retries_from_two_processes_have_exactly_one_effect,
    a_count_then_insert_rule_holds_under_concurrent_commands, the_rule_holds_under_group_commit_too,
    a_member_whose_appends_fail_fails_alone_under_group_commit,
    a_savepoint_rolled_back_takes_its_events_with_it, one_statement_per_exec,
    a_unique_violation_says_so_without_sql_names_or_values,
    a_nul_in_a_message_is_refused_at_decoding, a_nul_built_by_a_handler_is_refused_by_every_backend,
    reusing_an_id_with_another_payload_is_refused_and_has_no_effect,
    a_replay_names_the_request_that_ran_the_command);

// Writers on their own store handles commit batches of ticks with random delays and about 1%
// rollbacks while a reader follows the log; the reader must see every committed tick exactly
// once, in increasing position order. Returns what the reader saw.
template <class Backend>
std::vector<cleave::stored_event> gap_stress(const Backend& backend, int writers, int per_writer) {
  auto reader_store = backend.open();
  std::mutex committed_mutex;
  std::set<std::pair<std::int64_t, std::int64_t>> committed;
  std::atomic<int> done_writers{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      auto mine = backend.open();
      std::mt19937 rng(static_cast<unsigned>(w) * 7919u + 1u);
      std::uniform_int_distribution<int> delay_us(0, 400), roll(0, 99), batch(1, 3);
      for (int seq = 0; seq < per_writer; ++seq) {
        auto& tx = mine->begin_write({});
        cleave::write_context ctx(&tx, cleave::detail::no_meta);
        const int n = batch(rng);
        for (int i = 0; i < n; ++i) ctx.emit(tick{w, seq * 10 + i});
        std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
        if (roll(rng) == 0) {
          tx.rollback();
          continue;
        }
        tx.commit();
        std::lock_guard lock(committed_mutex);
        for (int i = 0; i < n; ++i) committed.emplace(w, seq * 10 + i);
      }
      ++done_writers;
    });
  }
  std::vector<cleave::stored_event> seen;
  cleave::position_token after;
  auto drain = [&] {
    for (;;) {
      auto batch = reader_store->read_events(after, 64);
      if (batch.empty()) return;
      for (auto& e : batch) {
        EXPECT_LT(after, e.position)
            << "the reader went backwards: " << after.to_string() << " then "
            << e.position.to_string() << " in a batch of " << batch.size();
        after = e.position;
        seen.push_back(std::move(e));
      }
    }
  };
  while (done_writers < writers) {
    drain();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (auto& t : threads) t.join();
  // On PostgreSQL a transaction running anywhere in the cluster (another test's) may hold the
  // reader back for a moment: drain until everything committed shows, or 10 s pass.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  do {
    drain();
  } while (seen.size() < committed.size() && std::chrono::steady_clock::now() < until &&
           (std::this_thread::sleep_for(std::chrono::milliseconds(2)), true));
  std::set<std::pair<std::int64_t, std::int64_t>> observed;
  for (const auto& e : seen) {
    auto key = std::make_pair(e.payload.value()["writer"].get<std::int64_t>(),
                              e.payload.value()["seq"].get<std::int64_t>());
    EXPECT_TRUE(observed.insert(key).second) << "seen twice: " << key.first << "/" << key.second;
  }
  EXPECT_EQ(observed.size(), committed.size());
  EXPECT_TRUE(observed == committed) << "the reader missed or invented events";
  return seen;
}

}  // namespace conformance
