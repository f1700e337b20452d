// The shop on PostgreSQL with a hot standby (label `replica`): the stock read after an order is
// served by the standby once it has replayed the order, and the admin figures show its lag.

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "pg_database.hpp"
#include "shop.hpp"

namespace {

TEST(shop_with_a_replica, reads_its_writes_from_the_standby_and_reports_its_lag) {
  cleave::testing::pg_database db;
  cleave::app_config cfg;
  cfg.database = db.url();
  cfg.replicas = {cleave::testing::with_database(cleave::testing::standby_url(), db.name())};
  for (int i = 0; i < 500; ++i) {  // the standby replays the new database first
    try {
      cleave::testing::admin(cfg.replicas[0], "select 1");
      break;
    } catch (const std::exception&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  cleave::app app{cfg};
  shop::install(app);
  app.migrate();
  shop::seed_demo_data(app);
  auto placed = app.commands().send(shop::place_order{"o1", "ada", {{"mug", 2}}});
  ASSERT_TRUE(placed) << placed.error().describe();
  cleave::request_meta fresh;
  fresh.consistency = cleave::at_least(placed->position);
  auto stock = app.queries().ask(shop::product_stock{"mug"}, fresh);
  ASSERT_TRUE(stock) << stock.error().describe();
  EXPECT_EQ(stock->stock, 38);
  auto replicas = cleave::replicas_json(app.store());
  ASSERT_EQ(replicas.size(), 1u);
  EXPECT_GE(replicas[0]["reads"].get<std::uint64_t>(), 1u);
  EXPECT_TRUE(replicas[0].contains("lag_seconds"));
  // A query that reads an async view waits for it on the primary, then reads it on the standby
  // once that has replayed the view's batch.
  app.start_workers();
  const auto before = cleave::replicas_json(app.store())[0]["reads"].get<std::uint64_t>();
  auto summary = app.queries().ask(shop::order_summary{"o1"}, fresh);
  ASSERT_TRUE(summary) << summary.error().describe();
  EXPECT_EQ(summary->lines.at(0).quantity, 2);
  EXPECT_EQ(cleave::replicas_json(app.store())[0]["reads"].get<std::uint64_t>(), before + 1)
      << "the view was read on the primary";
  app.stop_workers();
}

}  // namespace
