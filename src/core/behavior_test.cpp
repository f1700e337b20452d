#include <cleave/core/behavior.hpp>
#include <cleave/core/bus.hpp>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

namespace stock {

struct reserve {
  std::string sku;
  int quantity = 0;
  cleave::result<void> validate() const {
    if (quantity <= 0) return cleave::invalid("quantity", "must be positive");
    return {};
  }
};
CLEAVE_COMMAND(reserve, "stock.reserve", sku, quantity)

struct level {
  std::string sku;
  using response = int;
};
CLEAVE_QUERY(level, "stock.level", sku)

}  // namespace stock

namespace {

using cleave::errc;
using testing::ElementsAre;
using testing::HasSubstr;

// Records its name on the way in and out, to show the order behaviors run in.
class tracer final : public cleave::behavior {
 public:
  static constexpr cleave::applies_to scope = cleave::applies_to::both;
  tracer(std::string name, std::vector<std::string>& trace)
      : name_(std::move(name)), trace_(trace) {}
  cleave::result<void> handle(const cleave::message_ref& m, const cleave::request_meta&,
                              cleave::next_step next) override {
    trace_.push_back(name_ + " in " + std::string(m.info().wire_name));
    auto r = next();
    trace_.push_back(name_ + " out");
    return r;
  }

 private:
  std::string name_;
  std::vector<std::string>& trace_;
};

TEST(behaviors, run_in_the_order_they_were_added_around_the_handler) {
  std::vector<std::string> trace;
  cleave::command_bus commands;
  commands.use<tracer>("outer", trace);
  commands.add([&](const stock::reserve&) -> cleave::result<void> {
    trace.push_back("handler");
    return {};
  });
  commands.use<tracer>("inner", trace);  // added after the handler: still applies
  ASSERT_TRUE(commands.send(stock::reserve{"s", 1}));
  EXPECT_THAT(trace, ElementsAre("outer in stock.reserve", "inner in stock.reserve", "handler",
                                 "inner out", "outer out"));
}

TEST(behaviors, command_and_query_pipelines_are_separate) {
  std::vector<std::string> trace;
  cleave::command_bus commands;
  cleave::query_bus queries;
  commands.use<tracer>("cmd", trace);
  queries.use<tracer>("qry", trace);
  commands.add([](const stock::reserve&) -> cleave::result<void> { return {}; });
  queries.add([](const stock::level&) -> cleave::result<int> { return 5; });
  ASSERT_TRUE(queries.ask(stock::level{"s"}));
  EXPECT_THAT(trace, ElementsAre("qry in stock.level", "qry out"));
}

TEST(validation, refuses_an_invalid_message_before_the_handler_runs) {
  int calls = 0;
  cleave::command_bus commands;
  commands.use<cleave::validation>();
  commands.add([&](const stock::reserve&) -> cleave::result<void> {
    ++calls;
    return {};
  });
  auto r = commands.send(stock::reserve{"s", 0});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().category, errc::validation);
  EXPECT_EQ(r.error().fields.at(0).path, "quantity");
  EXPECT_EQ(calls, 0);
  EXPECT_TRUE(commands.send(stock::reserve{"s", 2}));
  EXPECT_EQ(calls, 1);
}

TEST(retry_on_conflict, reruns_the_command_until_it_stops_conflicting) {
  int calls = 0;
  cleave::command_bus commands;
  commands.use<cleave::retry_on_conflict>(3, std::chrono::microseconds(1));
  commands.add([&](const stock::reserve&) -> cleave::result<void> {
    if (++calls < 3) return cleave::conflict("version moved");
    return {};
  });
  EXPECT_TRUE(commands.send(stock::reserve{"s", 1}));
  EXPECT_EQ(calls, 3);
}

TEST(retry_on_conflict, gives_up_after_max_attempts_and_never_retries_other_errors) {
  int calls = 0;
  cleave::command_bus commands;
  commands.use<cleave::retry_on_conflict>(4, std::chrono::microseconds(1));
  commands.add([&](const stock::reserve& r) -> cleave::result<void> {
    ++calls;
    if (r.sku == "busy") return cleave::conflict("version moved");
    return cleave::rejected("out of stock");
  });
  auto busy = commands.send(stock::reserve{"busy", 1});
  ASSERT_FALSE(busy);
  EXPECT_EQ(busy.error().category, errc::conflict);
  EXPECT_EQ(calls, 4);
  calls = 0;
  auto refused = commands.send(stock::reserve{"other", 1});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().category, errc::rejected);
  EXPECT_EQ(calls, 1);
}

TEST(authorization, holds_the_same_rule_for_every_caller_of_both_buses) {
  cleave::command_bus commands;
  cleave::query_bus queries;
  int reserved = 0;
  const std::map<std::string, std::string, std::less<>> roles{{"stock.reserve", "clerk"},
                                                              {"stock.level", "viewer"}};
  commands.use<cleave::authorization>(roles);
  queries.use<cleave::authorization>(roles);
  commands.add([&](const stock::reserve&) -> cleave::result<void> {
    ++reserved;
    return {};
  });
  queries.add([](const stock::level&) -> cleave::result<int> { return 7; });

  auto anonymous = commands.send(stock::reserve{"tea", 1});
  ASSERT_FALSE(anonymous);
  EXPECT_EQ(anonymous.error().category, errc::unauthorized);
  cleave::request_meta clerk;
  clerk.principal = {"ann", {"clerk"}};
  auto by_name = commands.send_json("stock.reserve", {{"sku", "tea"}, {"quantity", 1}}, clerk);
  EXPECT_TRUE(by_name) << by_name.error().describe();
  auto wrong_role = queries.ask(stock::level{"tea"}, clerk);
  ASSERT_FALSE(wrong_role);
  EXPECT_EQ(wrong_role.error().category, errc::forbidden);
  EXPECT_THAT(wrong_role.error().message, HasSubstr("requires the role 'viewer'"));
  cleave::request_meta viewer;
  viewer.principal = {"bob", {"viewer"}};
  EXPECT_EQ(queries.ask(stock::level{"tea"}, viewer).value(), 7);
  EXPECT_EQ(reserved, 1);
}

TEST(timing, counts_calls_and_failures_per_message_type) {
  cleave::command_bus commands;
  auto& timer = commands.use<cleave::timing>();
  commands.add([&](const stock::reserve& r) -> cleave::result<void> {
    if (r.quantity > 5) return cleave::rejected("too many");
    return {};
  });
  for (int q : {1, 2, 9}) (void)commands.send(stock::reserve{"s", q});
  auto f = timer.figures_for("stock.reserve");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->count, 3u);
  EXPECT_EQ(f->failures, 1u);
  EXPECT_GE(f->total, f->max);
  EXPECT_FALSE(timer.figures_for("stock.level"));
}

TEST(logging, writes_one_line_per_dispatch_with_outcome_and_correlation) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  auto logger = std::make_shared<spdlog::logger>("test", sink);
  logger->set_level(spdlog::level::debug);
  logger->set_pattern("%l %v");
  cleave::query_bus queries;
  queries.use<cleave::logging>(logger);
  queries.add([](const stock::level& q) -> cleave::result<int> {
    if (q.sku.empty()) return cleave::not_found("no such sku");
    return 1;
  });
  cleave::request_meta meta;
  meta.correlation_id = "abc";
  ASSERT_TRUE(queries.ask(stock::level{"s"}, meta));
  ASSERT_FALSE(queries.ask(stock::level{""}, meta));
  const auto text = out.str();
  EXPECT_THAT(text, HasSubstr("debug query stock.level ok in"));
  EXPECT_THAT(text, HasSubstr("info query stock.level failed in"));
  EXPECT_THAT(text, HasSubstr("[correlation abc]: not_found: no such sku"));
}

class sku_guard final : public cleave::behavior {
 public:
  static constexpr cleave::applies_to scope = cleave::applies_to::commands;
  cleave::result<void> handle(const cleave::message_ref& m, const cleave::request_meta&,
                              cleave::next_step next) override {
    if (const auto* r = m.get<stock::reserve>(); r && r->sku == "locked")
      return cleave::fail(errc::forbidden, "sku is locked");
    EXPECT_EQ(m.to_json().value("sku", ""), m.get<stock::reserve>()->sku);
    return next();
  }
};

TEST(message_ref, gives_behaviors_typed_access_when_they_ask_for_it) {
  cleave::command_bus commands;
  commands.use<sku_guard>();
  commands.add([](const stock::reserve&) -> cleave::result<void> { return {}; });
  EXPECT_EQ(commands.send(stock::reserve{"locked", 1}).error().category, errc::forbidden);
  EXPECT_TRUE(commands.send(stock::reserve{"open", 1}));
}

}  // namespace
