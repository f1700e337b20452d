// The projection kit as a user would use it: given events, then the view's rows.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>
#include <cleave/testing/projection_kit.hpp>

namespace {

struct account_opened {
  std::string id;
  std::string owner;
};
CLEAVE_EVENT(account_opened, "kit.account_opened", id, owner)

struct deposited {
  std::string id;
  std::int64_t amount = 0;
};
CLEAVE_EVENT(deposited, "kit.deposited", id, amount)

struct balance {
  std::string id;
  std::int64_t amount = 0;
};
CLEAVE_RECORD(balance, id, amount)

cleave::projection balances() {
  cleave::projection p{"balances"};
  p.schema("create table {view}(id text primary key, amount bigint not null)")
      .on([](const account_opened& e, cleave::view_context& v) {
        v.exec("insert into {view}(id, amount) values ($1, 0)", e.id);
      })
      .on([](const deposited& e, cleave::view_context& v) {
        if (e.amount <= 0) throw std::runtime_error("a deposit must be positive");
        v.exec("update {view} set amount = amount + $2 where id = $1", e.id, e.amount);
      });
  return p;
}

TEST(projection_kit, given_events_then_the_view_holds_these_rows) {
  cleave::testing::projection_kit kit{balances()};
  kit.given("a1", account_opened{"a1", "Ada"}, deposited{"a1", 30}, deposited{"a1", 12})
      .given("a2", account_opened{"a2", "Alan"});
  auto v = kit.then_rows("select id, amount from {view} order by id",
                         std::vector<balance>{{"a1", 42}, {"a2", 0}});
  EXPECT_TRUE(v) << v.why;
  EXPECT_TRUE(kit.then_dead_letters(0));
}

TEST(projection_kit, a_wrong_expectation_says_what_differed) {
  cleave::testing::projection_kit kit{balances()};
  kit.given("a1", account_opened{"a1", "Ada"}, deposited{"a1", 5});
  auto v = kit.then_rows("select id, amount from {view}", std::vector<balance>{{"a1", 6}});
  EXPECT_FALSE(v);
  EXPECT_THAT(v.why, testing::HasSubstr(R"("amount":5)"));
}

TEST(projection_kit, an_event_the_handler_refuses_is_a_dead_letter) {
  cleave::testing::projection_kit kit{balances()};
  kit.given("a1", account_opened{"a1", "Ada"}, deposited{"a1", -5}, deposited{"a1", 7});
  EXPECT_TRUE(kit.then_rows("select id, amount from {view}", std::vector<balance>{{"a1", 7}}));
  auto v = kit.then_dead_letters(1);
  EXPECT_TRUE(v) << v.why;
  EXPECT_FALSE(kit.then_dead_letters(0));
}

TEST(projection_kit, inline_projections_and_materialized_views_work_the_same_way) {
  auto inline_balances = balances();
  inline_balances.inline_();
  cleave::testing::projection_kit kit{inline_balances};
  kit.given("a1", account_opened{"a1", "Ada"}, deposited{"a1", 3});
  EXPECT_TRUE(kit.then_rows("select id, amount from {view}", std::vector<balance>{{"a1", 3}}));

  constexpr cleave::migration tables[] = {
      {1, "accounts", "create table accounts(id text primary key, amount bigint not null)"}};
  cleave::projection rich{"rich"};
  rich.materialized("select id, amount from accounts where amount > 100", "id");
  cleave::testing::projection_kit mv{rich, tables};
  mv.given_sql("insert into accounts values ('x', 500), ('y', 50)");
  mv.given("x", deposited{"x", 1});  // an event, so the view is behind and refreshes
  EXPECT_TRUE(mv.then_rows("select id, amount from {view}", std::vector<balance>{{"x", 500}}));
}

// Release 1 stored deposits as `kit.money_in` with `sum`; the view reads them through the kit's
// upcasters, as the application's projector would.
TEST(projection_kit, old_events_reach_the_view_through_its_upcasters) {
  cleave::upcasters rewrites;
  rewrites.add("kit.money_in", "kit.deposited",
               [](cleave::json& payload) { payload["amount"] = payload["sum"]; });
  cleave::testing::projection_kit kit{balances(), rewrites};
  kit.given("a1", account_opened{"a1", "Ada"})
      .given_stored("a1", "kit.money_in", cleave::json{{"id", "a1"}, {"sum", 7}})
      .given("a1", deposited{"a1", 3});
  auto v = kit.then_rows("select id, amount from {view}", std::vector<balance>{{"a1", 10}});
  EXPECT_TRUE(v) << v.why;
}

cleave::testing::projection_kit balances_kit() {
  return cleave::testing::projection_kit{balances()};
}

cleave::memory_view<std::int64_t> opened_count() {
  cleave::memory_view<std::int64_t> view{"opened"};
  view.on([](const account_opened&, std::int64_t& n) { ++n; });
  return view;
}

// Kits and memory views made by factories work where they land.
TEST(projection_kit, kits_and_memory_views_move_out_of_factories) {
  auto kit = balances_kit();
  auto opened = opened_count();
  kit.projector().add(opened);
  kit.given("a1", account_opened{"a1", "Ada"}, deposited{"a1", 2});
  EXPECT_TRUE(kit.then_rows("select id, amount from {view}", std::vector<balance>{{"a1", 2}}));
  EXPECT_EQ(opened.read([](const std::int64_t& n) { return n; }), 1);
}

}  // namespace
