// The shop on PostgreSQL: the same handlers, given a postgresql:// URL instead of a file.

#include <future>
#include <vector>

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

TEST(shop_on_postgres, concurrent_http_requests_with_one_key_have_one_effect_and_one_answer) {
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
  for (const auto& a : answers) {
    EXPECT_EQ(a.status, 200) << a.body;
    EXPECT_EQ(a.body, answers[0].body);
  }
  EXPECT_EQ(app.queries().ask(shop::product_stock{"mug"}).value().stock, before + 1);
}

}  // namespace
