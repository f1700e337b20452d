#include <cleave/core/bus.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "bus_fixture.hpp"

// Registering handlers and dispatching to them, typed and by name, on both buses. What a
// command's transaction does (commit, rollback, retries, isolation) is in bus_behavior_test.cpp.

namespace {

using namespace bus_tests;

TEST(command_bus, typed_send_reaches_a_free_function_and_returns_its_response) {
  cleave::command_bus commands;
  commands.add([](const bank::open_account& c) -> cleave::result<std::int64_t> {
    return c.opening_balance * 2;
  });
  auto done = commands.send(bank::open_account{"a1", 21});
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(done->value, 42);
  EXPECT_TRUE(done->position.empty());  // no store, no position
}

TEST(command_bus, handlers_may_be_stateful_function_objects) {
  struct closer {
    std::shared_ptr<int> closed = std::make_shared<int>(0);
    cleave::result<void> operator()(const bank::close_account&, cleave::write_context&) {
      ++*closed;
      return {};
    }
  } handler;
  auto closed = handler.closed;
  cleave::command_bus commands;
  commands.add(handler);
  ASSERT_TRUE(commands.send(bank::close_account{"a1"}));
  ASSERT_TRUE(commands.send(bank::close_account{"a2"}));
  EXPECT_EQ(*closed, 2);
}

TEST(command_bus, a_second_handler_for_a_type_is_refused_naming_it) {
  cleave::command_bus commands;
  commands.add(open);
  try {
    commands.add(open);
    FAIL() << "a duplicate handler was accepted";
  } catch (const std::logic_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'bank.open_account' (open_account) is already registered"));
  }
}

TEST(command_bus, send_without_a_handler_names_the_type) {
  cleave::command_bus commands;
  auto done = commands.send(bank::never_handled{"x"});
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().category, errc::not_found);
  EXPECT_THAT(done.error().message, HasSubstr("'bank.never_handled' (never_handled)"));
}

TEST(command_bus, start_up_check_lists_every_declared_command_without_a_handler) {
  cleave::command_bus commands;
  commands.add(open);
  commands.add([](const bank::audit&) -> cleave::result<void> { return {}; });
  std::vector<std::string> missing;
  for (const auto* info : commands.unhandled()) missing.emplace_back(info->wire_name);
  EXPECT_THAT(missing, testing::UnorderedElementsAre("bank.close_account", "bank.never_handled"));
  auto check = commands.check_complete();
  ASSERT_FALSE(check);
  EXPECT_THAT(check.error().message, HasSubstr("2 declared commands without a handler"));
  EXPECT_THAT(check.error().message, HasSubstr("'bank.never_handled' (never_handled)"));
}

TEST(command_bus, dispatch_by_name_decodes_strictly_and_encodes_the_response) {
  recording_source store;
  cleave::command_bus commands(&store);
  commands.add(open);
  auto done = commands.send_json("bank.open_account", json{{"id", "a1"}, {"opening_balance", 7}});
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(done->result, 7);
  EXPECT_EQ(done->position.to_string(), "0.1.0");

  store.log.clear();
  auto bad = commands.send_json("bank.open_account", json{{"id", "a1"}, {"opening_balance", 7.5}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().category, errc::validation);
  EXPECT_EQ(bad.error().fields.at(0).path, "opening_balance");
  EXPECT_TRUE(store.log.empty()) << "a message that failed to decode reached the store";

  auto unknown = commands.send_json("bank.rob", json::object());
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().category, errc::not_found);
  EXPECT_EQ(unknown.error().message, "unknown command 'bank.rob'");
}

TEST(command_bus, concurrent_sends_are_safe) {
  std::atomic<int> calls{0};
  cleave::command_bus commands;
  commands.use<cleave::timing>();
  commands.add([&](const bank::close_account&) -> cleave::result<void> {
    calls.fetch_add(1);
    return {};
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) ASSERT_TRUE(commands.send(bank::close_account{"a"}));
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(calls.load(), 4000);
}

TEST(query_bus, ask_maps_rows_onto_the_declared_response) {
  recording_source store;
  recording_source::row r;
  r.cells = {{"balance", std::int64_t{12}}, {"id", std::string_view("a1")}};
  store.rows.push_back(r);
  cleave::query_bus queries(&store);
  queries.add([](const bank::account_by_id& q, const cleave::read_context& db) {
    return db.one<bank::account_view>("select id, balance from accounts where id = $1", q.id);
  });
  auto view = queries.ask(bank::account_by_id{"a1"});
  ASSERT_TRUE(view) << view.error().describe();
  EXPECT_EQ(view->id, "a1");
  EXPECT_EQ(view->balance, 12);
  EXPECT_THAT(store.log,
              testing::ElementsAre(
                  "begin read", "query select id, balance from accounts where id = $1", "finish"));
}

TEST(query_bus, one_without_rows_is_not_found_and_many_is_empty) {
  recording_source store;
  cleave::query_bus queries(&store);
  queries.add([](const bank::account_by_id& q, const cleave::read_context& db) {
    return db.one<bank::account_view>("select id, balance from accounts where id = $1", q.id);
  });
  queries.add([](const bank::count_accounts&,
                 const cleave::read_context& db) -> cleave::result<std::int64_t> {
    return static_cast<std::int64_t>(db.many<bank::account_view>("select * from accounts").size());
  });
  auto view = queries.ask(bank::account_by_id{"zz"});
  ASSERT_FALSE(view);
  EXPECT_EQ(view.error().category, errc::not_found);
  EXPECT_EQ(queries.ask(bank::count_accounts{}).value(), 0);
}

TEST(query_bus, a_row_that_does_not_fit_the_shape_is_an_internal_error_naming_the_column) {
  recording_source store;
  recording_source::row r;
  r.cells = {{"id", std::string_view("a1")}, {"balance", std::string_view("lots")}};
  store.rows.push_back(r);
  cleave::query_bus queries(&store);
  queries.add([](const bank::account_by_id&, const cleave::read_context& db) {
    return db.one<bank::account_view>("select id, balance from accounts");
  });
  auto view = queries.ask(bank::account_by_id{"a1"});
  ASSERT_FALSE(view);
  EXPECT_EQ(view.error().category, errc::internal);
  EXPECT_EQ(view.error().message, "column 'balance' is not an integer");
  EXPECT_EQ(store.log.back(), "finish");
}

TEST(query_bus, context_carries_correlation_principal_and_deadline) {
  cleave::query_bus queries;
  queries.add([](const bank::count_accounts&,
                 const cleave::read_context& ctx) -> cleave::result<std::int64_t> {
    if (ctx.correlation_id() != "c-1" || !ctx.principal().has_role("teller"))
      return cleave::fail(errc::forbidden, "not a teller");
    return ctx.deadline() == cleave::clock::time_point::max() ? 0 : 1;
  });
  cleave::request_meta meta;
  meta.correlation_id = "c-1";
  meta.principal = {"ada", {"teller"}};
  meta.deadline = cleave::clock::now() + std::chrono::seconds(1);
  EXPECT_EQ(queries.ask(bank::count_accounts{}, meta).value(), 1);
  EXPECT_EQ(queries.ask(bank::count_accounts{}).error().category, errc::forbidden);
}

TEST(query_bus, dispatch_by_name_returns_json) {
  cleave::query_bus queries;
  queries.add([](const bank::account_by_id& q) -> cleave::result<bank::account_view> {
    return bank::account_view{q.id, 3};
  });
  auto r = queries.ask_json("bank.account_by_id", json{{"id", "a1"}});
  ASSERT_TRUE(r) << r.error().describe();
  EXPECT_EQ(r->result, (json{{"id", "a1"}, {"balance", 3}}));
  auto unknown = queries.ask_json("bank.open_account", json{{"id", "a1"}});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().message,
            "unknown query 'bank.open_account'");  // a command, not a query
}

TEST(buses, commands_and_queries_stay_on_their_own_bus) {
  cleave::command_bus commands;
  cleave::query_bus queries;
  commands.add(open);
  EXPECT_TRUE(commands.handles("bank.open_account"));
  EXPECT_FALSE(queries.handles("bank.open_account"));
  for (const auto* info : queries.unhandled()) EXPECT_EQ(info->kind, cleave::message_kind::query);
}

TEST(position_token, text_form_round_trips_and_orders_by_transaction_then_position) {
  const cleave::position_token a(1, 0x20, 7), b(2, 1), c(2, 3);
  EXPECT_EQ(a.to_string(), "1.20.7");
  EXPECT_EQ(cleave::position_token::parse("1.20.7").value().lsn(), 7u);
  EXPECT_EQ(cleave::position_token::parse(a.to_string()).value(), a);
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_TRUE(cleave::position_token{}.empty());
  EXPECT_EQ(cleave::position_token{}.to_string(), "");
  EXPECT_TRUE(cleave::position_token::parse("").value().empty());
  for (const char* bad : {"1.2", "1.2.3.4", "x.1.2", "1..2", "1.2.3 ", "-1.2.3"}) {
    auto r = cleave::position_token::parse(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().category, cleave::errc::validation);
    EXPECT_THAT(r.error().message, HasSubstr("malformed position token"));
  }
}

}  // namespace
