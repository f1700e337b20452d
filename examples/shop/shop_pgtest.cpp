// The shop on PostgreSQL: the same handlers, given a postgresql:// URL instead of a file.

#include <algorithm>
#include <atomic>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/http/server.hpp>

#include "http_client.hpp"
#include "pg_database.hpp"
#include "shop.hpp"

namespace {

TEST(shop_on_postgres, places_summarizes_ranks_and_cancels_orders) {
  cleave::testing::pg_database db;
  cleave::app_config cfg;
  cfg.database = db.url();
  cleave::app app{cfg};
  shop::install(app);
  app.migrate();
  shop::seed_demo_data(app);
  auto placed = app.commands().send(shop::place_order{"o1", "ada", {{"mug", 3}, {"kettle", 1}}});
  ASSERT_TRUE(placed) << placed.error().describe();
  EXPECT_EQ(placed->value.total_cents, 3 * 599 + 2499);
  EXPECT_GT(placed->position.lsn(), 0u);
  // The summaries are an async view: ask to see the order just placed.
  cleave::request_meta fresh;
  fresh.consistency = cleave::at_least(placed->position);
  EXPECT_EQ(app.queries().ask(shop::order_summary{"o1"}).error().category, cleave::errc::not_found)
      << "the view was current before anyone projected it";
  app.start_workers();
  auto summary = app.queries().ask(shop::order_summary{"o1"}, fresh);
  ASSERT_TRUE(summary) << summary.error().describe();
  EXPECT_EQ(summary->buyer.name, "Ada Lovelace");
  ASSERT_EQ(summary->lines.size(), 2u);
  EXPECT_EQ(summary->lines[0].product_name, "Kettle");
  EXPECT_EQ(summary->lines[1].price_cents, 599);
  auto top = app.queries().ask(shop::top_products{1}, fresh);
  ASSERT_TRUE(top) << top.error().describe();
  ASSERT_EQ(top->size(), 1u);
  EXPECT_EQ((*top)[0].product_id, "mug");
  EXPECT_EQ((*top)[0].units_sold, 3);
  auto too_many = app.commands().send(shop::place_order{"o2", "ada", {{"cosy", 4}}});
  ASSERT_FALSE(too_many);
  EXPECT_EQ(too_many.error().category, cleave::errc::rejected);
  ASSERT_TRUE(app.commands().send(shop::cancel_order{"o1"}));
  EXPECT_EQ(app.queries().ask(shop::product_stock{"mug"}).value().stock, 40);
  cleave::request_meta strong;
  strong.consistency = cleave::strong();
  EXPECT_EQ(app.queries().ask(shop::customer_orders{"ada"}, strong).value().at(0).status,
            "cancelled");
}

// Orders whose lines name the same products in different orders, placed at once: each locks the
// product rows, so in request order two of them would wait for each other (a deadlock, ~1 s and a
// failure each). The shop locks them in one order: every order goes through, the stock adds up.
TEST(shop_on_postgres, concurrent_orders_over_the_same_products_do_not_deadlock) {
  cleave::testing::pg_database db;
  cleave::app_config cfg;
  cfg.database = db.url();
  cfg.run_projector = false;
  cleave::app app{cfg};
  shop::install(app);
  app.migrate();
  const std::vector<std::string> products{"a", "b", "c", "d"};
  for (const auto& id : products)
    ASSERT_TRUE(app.commands().send(shop::add_product{id, id, 100, 1000}));
  ASSERT_TRUE(app.commands().send(shop::register_customer{"ada", "Ada", std::nullopt}));
  constexpr int threads = 4, orders_each = 15;
  std::atomic<int> placed{0};
  std::vector<std::string> failures;
  std::mutex failures_mutex;
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t)
    clients.emplace_back([&, t] {
      auto mine = products;
      if (t % 2 == 1) std::reverse(mine.begin(), mine.end());
      for (int i = 0; i < orders_each; ++i) {
        std::rotate(mine.begin(), mine.begin() + 1, mine.end());
        shop::place_order order{fmt::format("o{}-{}", t, i), "ada", {}};
        for (const auto& id : mine) order.lines.push_back({id, 1});
        auto done = app.commands().send(order);
        if (done) {
          ++placed;
        } else {
          std::lock_guard lock(failures_mutex);
          failures.push_back(done.error().describe());
        }
      }
    });
  for (auto& c : clients) c.join();
  EXPECT_THAT(failures, ::testing::IsEmpty());
  EXPECT_EQ(placed.load(), threads * orders_each);
  for (const auto& id : products)
    EXPECT_EQ(app.queries().ask(shop::product_stock{id}).value().stock,
              1000 - threads * orders_each);
}

TEST(shop_on_postgres, concurrent_http_requests_with_one_key_have_one_effect_and_one_outcome) {
  cleave::testing::pg_database db;
  cleave::app_config cfg;
  cfg.database = db.url();
  cfg.listen = "127.0.0.1:0";
  cleave::app app{cfg};
  shop::install(app);
  app.migrate();
  shop::seed_demo_data(app);
  cleave::http::server server{app};
  server.start();
  const auto before = app.queries().ask(shop::product_stock{"mug"}).value().stock;
  constexpr int clients = 8;
  std::vector<std::future<cleave::testing::http_reply>> replies;
  for (int i = 0; i < clients; ++i)
    replies.push_back(std::async(std::launch::async, [&] {
      return cleave::testing::http(
          server.port(), "POST", "/commands/shop.restock", R"({"product_id":"mug","quantity":1})",
          {{"Content-Type", "application/json"}, {"Idempotency-Key", "one-click"}});
    }));
  std::vector<cleave::testing::http_reply> answers;
  for (auto& r : replies) answers.push_back(r.get());
  server.stop();
  // The same result at the same log position. The token's last part (the WAL position a replica
  // must have replayed) is read after the commit, so a replay's may lie further on: not compared.
  auto without_lsn = [](const cleave::testing::http_reply& a) {
    auto j = cleave::json::parse(a.body);
    auto position = j["position"].get<std::string>();
    j["position"] = position.substr(0, position.rfind('.'));
    return j;
  };
  for (const auto& a : answers) {
    EXPECT_EQ(a.status, 200) << a.body;
    EXPECT_EQ(without_lsn(a), without_lsn(answers[0]));
  }
  EXPECT_EQ(app.queries().ask(shop::product_stock{"mug"}).value().stock, before + 1);
}

}  // namespace
