// Idempotent commands on SQLite: a retry with the same command id returns the first outcome and
// has exactly one effect, also when retries race from two processes.

#include <cleave/sqlite/store.hpp>

#include <atomic>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>

#include "temp_dir.hpp"

namespace bank {

struct deposit {
  std::string account;
  std::int64_t amount = 0;
  using response = std::int64_t;  // the balance after it
};
CLEAVE_COMMAND(deposit, "bank.deposit", account, amount)

struct withdraw {
  std::string account;
  std::int64_t amount = 0;
  using response = std::int64_t;
};
CLEAVE_COMMAND(withdraw, "bank.withdraw", account, amount)

}  // namespace bank

namespace {

using cleave::errc;
using testing::HasSubstr;

constexpr cleave::migration schema[] = {
    {1, "accounts", "create table accounts(id text primary key, balance integer not null)"}};

std::atomic<int> deposit_runs{0};
std::atomic<bool> fail_next_deposit{false};

std::int64_t balance_of(cleave::write_context& tx, const std::string& account) {
  return tx.one<std::int64_t>("select balance from accounts where id = $1", account).value_or(0);
}

cleave::result<std::int64_t> deposit(const bank::deposit& c, cleave::write_context& tx) {
  ++deposit_runs;
  if (fail_next_deposit.exchange(false)) throw std::runtime_error("the disk hiccuped");
  tx.exec(
      "insert into accounts(id, balance) values ($1, $2) "
      "on conflict(id) do update set balance = balance + excluded.balance",
      c.account, c.amount);
  return balance_of(tx, c.account);
}

cleave::result<std::int64_t> withdraw(const bank::withdraw& c, cleave::write_context& tx) {
  const auto balance = balance_of(tx, c.account);
  if (balance < c.amount) return cleave::rejected("insufficient funds");
  tx.exec("update accounts set balance = balance - $2 where id = $1", c.account, c.amount);
  return balance - c.amount;
}

cleave::request_meta with_id(std::string id) {
  cleave::request_meta meta;
  meta.command_id = std::move(id);
  return meta;
}

struct idempotency : testing::Test {
  cleave::testing::temp_dir dir;
  cleave::sqlite::store db{{.path = dir.file("bank.db")}};
  cleave::command_bus commands{&db};

  void SetUp() override {
    db.migrate("bank", schema);
    commands.add(deposit);
    commands.add(withdraw);
    deposit_runs = 0;
  }
};

TEST_F(idempotency, a_retried_success_returns_the_first_outcome_and_has_one_effect) {
  auto first = commands.send(bank::deposit{"a", 10}, with_id("d-1"));
  auto retry = commands.send(bank::deposit{"a", 10}, with_id("d-1"));
  ASSERT_TRUE(first && retry);
  EXPECT_EQ(first->value, 10);
  EXPECT_EQ(retry->value, 10);
  EXPECT_EQ(retry->position, first->position);
  EXPECT_EQ(deposit_runs, 1);
  // Without an id, or with another, it runs again.
  EXPECT_EQ(commands.send(bank::deposit{"a", 10}).value().value, 20);
  EXPECT_EQ(commands.send(bank::deposit{"a", 10}, with_id("d-2")).value().value, 30);
}

TEST_F(idempotency, a_retried_rejection_stays_rejected_even_when_it_would_now_succeed) {
  auto first = commands.send(bank::withdraw{"a", 5}, with_id("w-1"));
  ASSERT_FALSE(first);
  EXPECT_EQ(first.error().category, errc::rejected);
  ASSERT_TRUE(commands.send(bank::deposit{"a", 100}));
  auto retry = commands.send(bank::withdraw{"a", 5}, with_id("w-1"));
  ASSERT_FALSE(retry);
  EXPECT_EQ(retry.error().category, errc::rejected);
  EXPECT_EQ(retry.error().message, "insufficient funds");
}

TEST_F(idempotency, a_transient_failure_is_not_remembered) {
  fail_next_deposit = true;
  auto first = commands.send(bank::deposit{"a", 7}, with_id("d-9"));
  ASSERT_FALSE(first);
  EXPECT_EQ(first.error().category, errc::internal);
  auto retry = commands.send(bank::deposit{"a", 7}, with_id("d-9"));
  ASSERT_TRUE(retry) << retry.error().describe();
  EXPECT_EQ(retry->value, 7);
}

TEST_F(idempotency, reusing_an_id_for_another_command_is_a_conflict) {
  ASSERT_TRUE(commands.send(bank::deposit{"a", 10}, with_id("x-1")));
  auto other = commands.send(bank::withdraw{"a", 1}, with_id("x-1"));
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().category, errc::conflict);
  EXPECT_THAT(other.error().message, HasSubstr("already used for 'bank.deposit'"));
}

TEST_F(idempotency, outcomes_expire_after_the_retention) {
  cleave::sqlite::store short_memory{
      {.path = dir.file("bank.db"), .outcome_retention = std::chrono::seconds(0)}};
  cleave::command_bus forgetful{&short_memory};
  forgetful.add(deposit);
  ASSERT_TRUE(forgetful.send(bank::deposit{"b", 1}, with_id("e-1")));
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(forgetful.send(bank::deposit{"b", 1}, with_id("e-1")).value().value, 2);
  EXPECT_EQ(deposit_runs, 2);
}

TEST_F(idempotency, racing_retries_from_two_processes_have_exactly_one_effect) {
  constexpr int racers = 4;
  constexpr int rounds = 25;
  std::vector<std::thread> threads;
  std::vector<std::vector<std::int64_t>> seen(racers);
  for (int r = 0; r < racers; ++r) {
    threads.emplace_back([&, r] {
      cleave::sqlite::store mine{{.path = dir.file("bank.db")}};  // its own connections
      cleave::command_bus bus{&mine};
      bus.add(deposit);
      for (int i = 0; i < rounds; ++i) {
        auto done = bus.send(bank::deposit{"race", 1}, with_id("race-" + std::to_string(i)));
        seen[static_cast<std::size_t>(r)].push_back(done ? done->value : -1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(deposit_runs, rounds);
  for (int i = 0; i < rounds; ++i)
    for (int r = 1; r < racers; ++r)
      EXPECT_EQ(seen[static_cast<std::size_t>(r)][static_cast<std::size_t>(i)],
                seen[0][static_cast<std::size_t>(i)]);
  EXPECT_EQ(commands.send(bank::deposit{"race", 0}).value().value, rounds);
}

}  // namespace
