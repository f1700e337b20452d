// The shop's own rules on SQLite: bounds on money and quantities, checked arithmetic, and what a
// refused command leaves behind (nothing).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>

#include <cleave/testing/process_kit.hpp>

#include "shop.hpp"

namespace {

struct shop_on_sqlite : ::testing::Test {
  cleave::app app{[] {
    cleave::app_config cfg;
    cfg.database = ":memory:";
    cfg.run_projector = false;
    return cfg;
  }()};
  void SetUp() override {
    shop::install(app);
    app.migrate();
    shop::seed_demo_data(app);
  }
  std::int64_t stock(const std::string& id) {
    return app.queries().ask(shop::product_stock{id}).value().stock;
  }
  // A product written straight into the table, past what add_product allows (a row from before
  // the bounds, or from another tool).
  void put_product(const std::string& id, std::int64_t price_cents, std::int64_t stock) {
    auto& tx = app.store().begin_write({});
    tx.exec("insert into products(id, name, price_cents, stock) values ($1, $1, $2, $3)",
            std::array<cleave::sql_value, 3>{std::string_view(id), price_cents, stock});
    (void)tx.commit();
  }
};

TEST_F(shop_on_sqlite, an_order_whose_total_would_overflow_is_refused_and_leaves_nothing) {
  put_product("gold", std::numeric_limits<std::int64_t>::max() / 2, 10);
  auto placed = app.commands().send(shop::place_order{"o1", "ada", {{"mug", 1}, {"gold", 3}}});
  ASSERT_FALSE(placed) << "total " << placed->value.total_cents;
  EXPECT_EQ(placed.error().category, cleave::errc::validation);
  ASSERT_EQ(placed.error().fields.size(), 1u);
  EXPECT_EQ(placed.error().fields[0].path, "lines[1].quantity");
  EXPECT_EQ(stock("gold"), 10);
  EXPECT_EQ(stock("mug"), 40);
}

TEST_F(shop_on_sqlite, money_and_quantities_are_bounded_by_validate) {
  auto price =
      app.commands().send(shop::add_product{"yacht", "Yacht", shop::max_price_cents + 1, 1});
  ASSERT_FALSE(price);
  EXPECT_EQ(price.error().fields.at(0).path, "price_cents");
  auto huge = app.commands().send(shop::restock{"mug", std::int64_t{1} << 62});
  ASSERT_FALSE(huge);
  EXPECT_EQ(huge.error().category, cleave::errc::validation);
  EXPECT_EQ(huge.error().fields.at(0).path, "quantity");
  auto line =
      app.commands().send(shop::place_order{"o1", "ada", {{"mug", shop::max_quantity + 1}}});
  ASSERT_FALSE(line);
  EXPECT_EQ(line.error().fields.at(0).path, "lines[0].quantity");
  EXPECT_EQ(stock("mug"), 40);
}

TEST_F(shop_on_sqlite, a_restock_past_the_most_stock_is_rejected_not_an_internal_error) {
  put_product("sand", 1, shop::max_stock - 5);
  auto over = app.commands().send(shop::restock{"sand", 6});
  ASSERT_FALSE(over);
  EXPECT_EQ(over.error().category, cleave::errc::rejected);
  EXPECT_EQ(stock("sand"), shop::max_stock - 5);
  auto to_the_top = app.commands().send(shop::restock{"sand", 5});
  ASSERT_TRUE(to_the_top) << to_the_top.error().describe();
  EXPECT_EQ(to_the_top->value, shop::max_stock);
}

TEST_F(shop_on_sqlite,
       an_order_answers_its_lines_in_the_order_given_whatever_order_rows_are_locked) {
  auto placed =
      app.commands().send(shop::place_order{"o1", "ada", {{"tea", 1}, {"cosy", 1}, {"mug", 2}}});
  ASSERT_TRUE(placed) << placed.error().describe();
  EXPECT_EQ(placed->value.total_cents, 899 + 1299 + 2 * 599);
  auto events = app.store().read_events({}, 1000);
  ASSERT_FALSE(events.empty());
  const auto& last = events.back();
  ASSERT_EQ(last.type, "shop.order_placed");
  auto order = cleave::decode_event<shop::order_placed>(last, nullptr);
  ASSERT_TRUE(order);
  ASSERT_EQ(order->lines.size(), 3u);
  EXPECT_EQ(order->lines[0].product_id, "tea");
  EXPECT_EQ(order->lines[1].product_id, "cosy");
  EXPECT_EQ(order->lines[2].product_id, "mug");
}

}  // namespace

namespace {

TEST_F(shop_on_sqlite, an_order_is_paid_once_and_a_paid_order_is_not_cancelled) {
  ASSERT_TRUE(app.commands().send(shop::place_order{"p1", "ada", {{"mug", 2}}}));
  ASSERT_TRUE(app.commands().send(shop::pay_order{"p1"}));
  auto twice = app.commands().send(shop::pay_order{"p1"});
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error().category, cleave::errc::rejected);
  auto cancel = app.commands().send(shop::cancel_order{"p1"});
  ASSERT_FALSE(cancel);
  EXPECT_THAT(cancel.error().message, ::testing::HasSubstr("is paid"));
  EXPECT_EQ(stock("mug"), 38);  // still held by the paid order
  // A cancelled order cannot be paid.
  ASSERT_TRUE(app.commands().send(shop::place_order{"p2", "ada", {{"mug", 1}}}));
  ASSERT_TRUE(app.commands().send(shop::cancel_order{"p2"}));
  auto late = app.commands().send(shop::pay_order{"p2"});
  ASSERT_FALSE(late);
  EXPECT_THAT(late.error().message, ::testing::HasSubstr("cancelled"));
  EXPECT_EQ(app.commands().send(shop::pay_order{"nope"}).error().category, cleave::errc::not_found);
}

shop::order_placed placed(std::string id, std::chrono::system_clock::time_point at) {
  shop::order_placed e;
  e.order_id = std::move(id);
  e.placed_at =
      std::chrono::duration_cast<std::chrono::milliseconds>(at.time_since_epoch()).count();
  return e;
}

// The payment deadline through the process kit: scheduled when placed, sent when the clock
// reaches it, taken back when paid.
TEST(shop_payments, an_unpaid_order_is_cancelled_at_its_deadline_and_a_paid_one_is_not) {
  using namespace std::chrono_literals;
  cleave::testing::process_kit kit{shop::order_payments(15min)};
  kit.given("o1", placed("o1", kit.now()));
  kit.given("o2", placed("o2", kit.now()));
  auto v = kit.then_scheduled(std::vector<shop::cancel_order>{{"o1"}, {"o2"}});
  EXPECT_TRUE(v) << v.why;
  kit.given("o2", shop::order_paid{"o2", 0});
  kit.advance(14min);
  v = kit.then_sent(std::vector<shop::cancel_order>{});
  EXPECT_TRUE(v) << v.why;
  kit.advance(1min);
  v = kit.then_sent(std::vector<shop::cancel_order>{{"o1"}});
  EXPECT_TRUE(v) << v.why;
  EXPECT_TRUE(kit.scheduled().empty());
  // Paid meanwhile: the cancellation is refused, and the instance ends quietly.
  kit.refuse<shop::cancel_order>({cleave::errc::rejected, "order 'o3' is paid", {}});
  kit.given("o3", placed("o3", kit.now()));
  kit.advance(15min);
  EXPECT_TRUE(kit.state("o3").is_null());
  EXPECT_TRUE(kit.scheduled().empty());
}

}  // namespace

namespace {

TEST(shop_payments, the_payment_timeout_is_read_from_the_settings_and_a_bad_one_is_refused) {
  cleave::app_config cfg;
  EXPECT_EQ(shop::payment_timeout(cfg), std::chrono::minutes(15));
  cfg.settings = {{"payment_timeout_ms", 250}};
  EXPECT_EQ(shop::payment_timeout(cfg), std::chrono::milliseconds(250));
  for (const auto& bad : {cleave::json("soon"), cleave::json(0), cleave::json(-5)}) {
    cfg.settings = {{"payment_timeout_ms", bad}};
    try {
      (void)shop::payment_timeout(cfg);
      ADD_FAILURE() << "accepted " << bad.dump();
    } catch (const cleave::error_exception& e) {
      EXPECT_THAT(e.error().message, ::testing::HasSubstr("payment_timeout_ms"));
    }
  }
}

}  // namespace
