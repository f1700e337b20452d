#pragma once
// The shop's payment deadline under fire (label `workflow`, typed on the backend): clients place
// orders and pay some of them — some in time, some too late — while the processes that run the
// process manager and the scheduler (`shop project`, two at a time, one leading) are killed with
// SIGKILL again and again. Afterwards every order is paid or cancelled, exactly once; the stock
// balances; no command had two effects; no schedule is lost or left failed.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "shop.hpp"

namespace shop_workflow {

// `shop project` on the test's database, killed with SIGKILL when it goes out of scope.
struct projector_process {
  pid_t pid = -1;
  projector_process(const std::string& database, std::chrono::milliseconds timeout) {
    pid = fork();
    if (pid == 0) {
      setenv("CLEAVE_DATABASE", database.c_str(), 1);
      setenv("SHOP_PAYMENT_TIMEOUT_MS", std::to_string(timeout.count()).c_str(), 1);
      setenv("CLEAVE_LOG_LEVEL", "error", 1);
      setenv("SHOP_CONFIG", "/nonexistent/shop.json", 1);
      execl(SHOP_BINARY, SHOP_BINARY, "project", static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  projector_process(const projector_process&) = delete;
  projector_process& operator=(const projector_process&) = delete;
  ~projector_process() { kill_now(); }
  void kill_now() {
    if (pid <= 0) return;
    ::kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
};

template <class Backend>
struct payment_deadlines : testing::Test {
  Backend backend;
  static constexpr auto timeout = std::chrono::milliseconds(300);

  std::unique_ptr<cleave::app> client() {
    cleave::app_config cfg;
    cfg.database = backend.location();
    cfg.run_projector = false;  // the shop processes under fire run the manager and scheduler
    cfg.log_level = "error";
    cfg.settings = {{"payment_timeout_ms", timeout.count()}};
    auto a = std::make_unique<cleave::app>(cfg);
    shop::install(*a);
    a->migrate();
    shop::seed_demo_data(*a);
    return a;
  }

  static std::int64_t scalar(cleave::app& a, const std::string& sql) {
    cleave::read_scope tx(a.store(), cleave::detail::no_meta, cleave::strong());
    cleave::read_context ctx(&*tx, cleave::detail::no_meta);
    return ctx.one<std::int64_t>(sql).value_or(-1);
  }
};

TYPED_TEST_SUITE_P(payment_deadlines);

TYPED_TEST_P(payment_deadlines, every_order_is_paid_or_cancelled_once_while_projectors_are_killed) {
  auto shop = this->client();
  auto& commands = shop->commands();
  const auto restock_by = 100'000;
  for (const char* id : {"kettle", "teapot", "mug", "tea", "cosy"})
    ASSERT_TRUE(commands.send(shop::restock{id, restock_by}));
  const auto stock_before = this->scalar(*shop, "select sum(stock) from products");
  const std::string database = this->backend.location();

  std::atomic<bool> firing{true};
  std::mutex mutex;
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> to_pay;
  std::atomic<int> placed{0}, paid{0}, too_late{0};
  std::thread buyer([&] {
    std::mt19937 random{7};
    const char* products[] = {"kettle", "teapot", "mug", "tea", "cosy"};
    const char* buyers[] = {"ada", "grace", "alan"};
    for (int i = 0; firing; ++i) {
      const auto id = fmt::format("wo{}", i);
      auto done = commands.send(shop::place_order{
          id, buyers[i % 3], {{products[i % 5], 1 + static_cast<std::int64_t>(random() % 3)}}});
      if (done) {
        ++placed;
        // Half are paid, some in time and some after their deadline.
        if (i % 2 == 0) {
          std::lock_guard lock(mutex);
          to_pay.emplace_back(
              id, std::chrono::steady_clock::now() + std::chrono::milliseconds(random() % 500));
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(8));
    }
  });
  std::thread payer([&] {
    for (bool more = true; more;) {
      std::vector<std::string> due;
      {
        std::lock_guard lock(mutex);
        more = firing || !to_pay.empty();
        const auto now = std::chrono::steady_clock::now();
        for (auto it = to_pay.begin(); it != to_pay.end();) {
          if (it->second > now) {
            ++it;
            continue;
          }
          due.push_back(it->first);
          it = to_pay.erase(it);
        }
      }
      for (const auto& id : due) {
        // Sent twice with one key, as a client that lost the first answer: one effect.
        cleave::request_meta meta;
        meta.command_id = "pay-" + id;
        auto r = commands.send(shop::pay_order{id}, meta);
        auto again = commands.send(shop::pay_order{id}, meta);
        EXPECT_EQ(static_cast<bool>(r), static_cast<bool>(again));
        if (r)
          ++paid;
        else if (r.error().category == cleave::errc::rejected)
          ++too_late;
        else
          ADD_FAILURE() << r.error().describe();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });

  // Two projector processes at a time (one leads, one stands by); one of them, at random, is
  // killed every 50-250 ms and replaced.
  constexpr int kills = 22;
  {
    std::mt19937 random{11};
    std::unique_ptr<projector_process> running[2];
    for (auto& p : running) p = std::make_unique<projector_process>(database, this->timeout);
    for (int k = 0; k < kills; ++k) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50 + random() % 200));
      auto& victim = running[random() % 2];
      victim->kill_now();
      victim = std::make_unique<projector_process>(database, this->timeout);
    }
    // Enough orders for the counts below, however slow the machine is today (a busy one places
    // fewer while the kills go on).
    for (const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
         placed.load() <= 100 && std::chrono::steady_clock::now() < until;)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    firing = false;
    buyer.join();
    payer.join();
    // The survivors finish the work: every order paid or past its deadline and cancelled.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < until &&
           this->scalar(*shop,
                        "select count(*) from orders where status <> 'cancelled' and paid_at is "
                        "null") > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const auto settle_until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    // (The manager completes an instance when it handles the order's last event, which the
    // cancellation's own commit comes before.)
    while (std::chrono::steady_clock::now() < settle_until &&
           this->scalar(*shop, "select count(*) from cleave_schedules") +
                   this->scalar(*shop, "select count(*) from order_payments") >
               0)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  fmt::print(stderr,
             "{} kills: {} orders placed, {} paid in time, {} payments too late, {} cancelled at "
             "their deadline\n",
             kills, placed.load(), paid.load(), too_late.load(),
             this->scalar(*shop, "select count(*) from orders where status = 'cancelled'"));
  ASSERT_GT(placed.load(), 100);
  EXPECT_GT(paid.load(), 0);
  // Some deadlines passed: the orders never paid (every other one), and any paid too late, were
  // cancelled. (Not counted from `placed`: when every payment lands in time, as it may while the
  // projectors that cancel are being killed, the unpaid half of an odd count rounds down.)
  EXPECT_GT(this->scalar(*shop, "select count(*) from orders where status = 'cancelled'"), 0);
  // Paid or cancelled, never both, never neither.
  EXPECT_EQ(this->scalar(*shop,
                         "select count(*) from orders where status <> 'cancelled' and paid_at is "
                         "null"),
            0);
  EXPECT_EQ(this->scalar(*shop,
                         "select count(*) from orders where status = 'cancelled' and paid_at is "
                         "not null"),
            0);
  EXPECT_EQ(this->scalar(*shop, "select count(*) from orders"), placed.load());
  EXPECT_EQ(this->scalar(*shop, "select count(*) from orders where paid_at is not null"),
            paid.load());
  // Exactly one of the two events per order, and no command with two effects.
  EXPECT_EQ(this->scalar(*shop,
                         "select count(*) from (select stream from cleave_events where type in "
                         "('shop.order_paid', 'shop.order_cancelled') group by stream having "
                         "count(*) = 1) as once"),
            placed.load());
  EXPECT_EQ(
      this->scalar(*shop,
                   "select count(*) from (select command_id from cleave_events where "
                   "command_id is not null group by command_id having count(*) > 1) as twice"),
      0);
  // Stock: what was there, plus restocks, less what live orders hold.
  EXPECT_EQ(
      this->scalar(*shop,
                   "select sum(stock) + (select coalesce(sum(l.quantity), 0) from order_lines "
                   "l join orders o on o.id = l.order_id where o.status <> 'cancelled') from "
                   "products"),
      stock_before);
  // Nothing left behind: no schedule pending or failed, no instance waiting.
  EXPECT_EQ(this->scalar(*shop, "select count(*) from cleave_schedules"), 0);
  EXPECT_EQ(this->scalar(*shop, "select count(*) from order_payments"), 0);
  EXPECT_EQ(this->scalar(*shop, "select count(*) from cleave_dead_letters"), 0);
}

// The leading projector process dies with a deadline pending: the one standing by takes the
// lease and sends the cancellation.
TYPED_TEST_P(payment_deadlines, a_deadline_survives_a_projector_failover) {
  auto shop = this->client();
  const std::string database = this->backend.location();
  constexpr auto failover_timeout = std::chrono::milliseconds(1500);
  auto leader = std::make_unique<projector_process>(database, failover_timeout);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // it has taken the lease
  projector_process standby(database, failover_timeout);
  ASSERT_TRUE(shop->commands().send(shop::place_order{"f1", "ada", {{"mug", 2}}}));
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (this->scalar(*shop, "select count(*) from cleave_schedules") == 0 &&
         std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(this->scalar(*shop, "select count(*) from cleave_schedules"), 1)
      << "the leader's process manager did not schedule the deadline";
  leader->kill_now();
  const auto cancelled_by = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (this->scalar(*shop, "select count(*) from orders where status = 'cancelled'") == 0 &&
         std::chrono::steady_clock::now() < cancelled_by)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(this->scalar(*shop,
                         "select count(*) from orders where id = 'f1' and status = "
                         "'cancelled'"),
            1);
  EXPECT_EQ(this->scalar(*shop,
                         "select count(*) from cleave_events where type = "
                         "'shop.order_cancelled'"),
            1);
}

REGISTER_TYPED_TEST_SUITE_P(payment_deadlines,
                            every_order_is_paid_or_cancelled_once_while_projectors_are_killed,
                            a_deadline_survives_a_projector_failover);

}  // namespace shop_workflow
