#pragma once
// Commands over HTTP under group commit, on any backend: each runs as a fiber of its I/O thread
// while its group commits, and still gets its own outcome — accepted, refused, retried after a
// transient failure, replayed under its Idempotency-Key — while the commands of many connections
// share commits. A test file defines `grouped_database()`: the app's `database` setting.

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <cleave/http/server.hpp>

#include "http_client.hpp"
#include "temp_dir.hpp"

std::string grouped_database(const cleave::testing::temp_dir& dir);

namespace grouped_http {
struct deposit {
  std::string id;
  std::int64_t amount = 0;
  using response = std::int64_t;  // the account's balance after it
};
CLEAVE_COMMAND(deposit, "grouped_http.deposit", id, amount)

constexpr cleave::migration schema[] = {
    {1, "deposits", "create table deposits(id text not null, amount bigint not null)"},
    {2, "deposits by account", "create index deposits_by_id on deposits(id)"}};
}  // namespace grouped_http

namespace grouped_http {

using cleave::json;
using cleave::testing::http_connection;
using cleave::testing::http_reply;

struct grouped_server : ::testing::Test {
  cleave::testing::temp_dir dir;
  std::unique_ptr<cleave::app> app;
  std::unique_ptr<cleave::http::server> server;
  std::uint16_t port = 0;
  std::mutex flaky_mutex;
  std::map<std::string, int> flaky_runs;  // by id: runs of deposits to "flaky-…" accounts

  void SetUp() override {
    cleave::app_config cfg;
    cfg.database = grouped_database(dir);
    cfg.listen = "127.0.0.1:0";
    cfg.run_projector = false;
    cfg.group_commit = true;
    cfg.io_threads = 2;
    // One lane on every backend (PostgreSQL's lanes follow the workers): the deposits of many
    // accounts read and write one index page, which concurrent lanes' serializable
    // transactions would collide on, beyond what the bus's retries absorb.
    cfg.workers = 1;
    app = std::make_unique<cleave::app>(cfg);
    app->add_migrations("grouped_http", grouped_http::schema);
    app->migrate();
    // A rule checked by reading; refusals of negative amounts; a transient failure on the first
    // two runs of deposits to "flaky-…" accounts (the bus runs them again after a pause).
    app->commands().add([this](const grouped_http::deposit& c,
                               cleave::write_context& tx) -> cleave::result<std::int64_t> {
      if (c.amount < 0) return cleave::rejected("a deposit is positive");
      if (c.id.starts_with("flaky-")) {
        const std::lock_guard lock(flaky_mutex);
        if (++flaky_runs[c.id] <= 2)
          throw cleave::transient_error({cleave::errc::conflict, "the database gave up", {}});
      }
      tx.exec("insert into deposits(id, amount) values ($1, $2)", c.id, c.amount);
      return tx.one<std::int64_t>("select sum(amount) from deposits where id = $1", c.id)
          .value_or(0);
    });
    server = std::make_unique<cleave::http::server>(*app);
    server->start();
    port = server->port();
  }
  void TearDown() override { server->stop(); }

  std::int64_t total() {
    cleave::read_scope tx(app->store(), cleave::detail::no_meta);
    cleave::read_context ctx(&*tx, cleave::detail::no_meta);
    return ctx.one<std::int64_t>("select coalesce(sum(amount), 0) from deposits").value_or(-1);
  }
};

http_reply send_deposit(http_connection& c, const std::string& id, std::int64_t amount,
                        const std::string& key) {
  return c.request("POST", "/commands/grouped_http.deposit",
                   json{{"id", id}, {"amount", amount}}.dump(),
                   {{"Content-Type", "application/json"}, {"Idempotency-Key", key}});
}

TEST_F(grouped_server, concurrent_commands_share_commits_and_each_gets_its_own_outcome) {
  constexpr int connections = 24, each = 25;
  // Every fifth command is refused; the rest deposit 1..each into an account of their own.
  std::vector<std::vector<http_reply>> replies(connections);
  std::vector<std::thread> clients;
  for (int t = 0; t < connections; ++t)
    clients.emplace_back([&, t] {
      http_connection c(port);
      for (int i = 0; i < each; ++i)
        replies[t].push_back(send_deposit(c, "acct-" + std::to_string(t), i % 5 == 4 ? -1 : i + 1,
                                          "k-" + std::to_string(t) + "-" + std::to_string(i)));
    });
  for (auto& c : clients) c.join();

  std::int64_t expected_total = 0;
  for (int t = 0; t < connections; ++t) {
    std::int64_t balance = 0;
    for (int i = 0; i < each; ++i) {
      const auto& r = replies[t][i];
      SCOPED_TRACE(r.body);
      if (i % 5 == 4) {
        EXPECT_EQ(r.status, 422);
        EXPECT_NE(r.body.find("a deposit is positive"), std::string::npos);
        continue;
      }
      ASSERT_EQ(r.status, 200);
      balance += i + 1;
      // (Each connection's commands run in order: the balance is its own running sum.)
      EXPECT_EQ(json::parse(r.body)["result"], balance);
    }
    expected_total += balance;
  }
  EXPECT_EQ(total(), expected_total);
  const auto* grouped = app->group_commits();
  EXPECT_LT(grouped->groups_committed(), grouped->commands_committed());

  // Every key again, from one connection: each gets its first outcome, and nothing runs twice.
  http_connection again(port);
  for (int t = 0; t < connections; ++t)
    for (int i = 0; i < each; ++i) {
      const auto r = send_deposit(again, "acct-" + std::to_string(t), i % 5 == 4 ? -1 : i + 1,
                                  "k-" + std::to_string(t) + "-" + std::to_string(i));
      EXPECT_EQ(r.status, replies[t][i].status);
      EXPECT_EQ(json::parse(r.body)["result"], json::parse(replies[t][i].body)["result"]);
    }
  EXPECT_EQ(total(), expected_total);
}

TEST_F(grouped_server, a_command_that_fails_transiently_runs_again_while_others_go_on) {
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t)
    clients.emplace_back([&, t] {
      http_connection c(port);
      const auto r =
          send_deposit(c, "flaky-" + std::to_string(t), 10, "flaky-" + std::to_string(t));
      if (r.status == 200 && json::parse(r.body)["result"] == 10) ++ok;
      for (int i = 0; i < 10; ++i)
        if (send_deposit(c, "steady", 1, "steady-" + std::to_string(t) + "-" + std::to_string(i))
                .status == 200)
          ++ok;
    });
  for (auto& c : clients) c.join();
  EXPECT_EQ(ok.load(), 8 * 11);
  EXPECT_EQ(total(), 8 * 10 + 8 * 10);
  const std::lock_guard lock(flaky_mutex);
  // (At least: a member that ran before a held member's statement failed runs again.)
  for (int t = 0; t < 8; ++t) EXPECT_GE(flaky_runs["flaky-" + std::to_string(t)], 3);
}

}  // namespace grouped_http
