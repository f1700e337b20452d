#pragma once
// given / then for a user's process managers, on an in-memory SQLite database with a clock the
// test moves: given these events, then these commands were sent and these are scheduled; advance
// the clock, and a deadline's command is sent. Commands are not run: the kit takes what the
// manager sends (as the application's scheduler would hand it to the command bus) and answers
// success — or a refusal the test asked for, which the manager's on_rejected handler then gets
// (a refusal of category rejected, validation or not_found; others leave the schedule failed, as
// the application's scheduler does).
//
//   cleave::testing::process_kit kit{shop::order_payments(std::chrono::minutes(15))};
//   kit.given("o1", order_placed{.order_id = "o1"});
//   EXPECT_TRUE(kit.then_scheduled(std::vector{cancel_order{"o1"}}));
//   kit.advance(std::chrono::minutes(15));
//   EXPECT_TRUE(kit.then_sent(std::vector{cancel_order{"o1"}}));

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <cleave/read/projector.hpp>
#include <cleave/sqlite/store.hpp>
#include <cleave/testing/kit.hpp>
#include <cleave/workflow/process_manager.hpp>
#include <cleave/workflow/scheduler.hpp>

namespace cleave::testing {

class process_kit {
 public:
  // A fresh in-memory database with `manager` registered; its clock becomes the kit's (a copy of
  // a manager shares its clock with the original), which starts at the system clock's now.
  template <class State>
  explicit process_kit(process_manager<State> manager) : process_kit(init{}) {
    manager.clock([now = now_] {
      return std::chrono::system_clock::time_point(std::chrono::milliseconds(*now));
    });
    name_ = manager.name();
    projector_->add(manager.as_projection());
    scheduler_->on_refused(manager.name(), manager.refusal_handler());
    scheduler_->runs_as(manager.name(), manager.runs_as());
  }

  // Given: these events appended to `stream` in one transaction; the manager handles them (and
  // what it sends is taken) before the next `then`.
  template <class... E>
  process_kit& given(std::string_view stream, const E&... events) {
    detail::append_events(projector_->source(), stream, events...);
    return *this;
  }
  // Moves the clock on; what comes due is sent.
  process_kit& advance(std::chrono::milliseconds by);
  // From now on, a sent command of type C is answered with `refusal` instead of success.
  template <class C>
  process_kit& refuse(error refusal) {
    taken_->refusals.emplace_back(std::string(info_of<C>().wire_name), std::move(refusal));
    return *this;
  }

  // A command the manager sent: its wire name and payload.
  struct sent_command {
    std::string command;
    json payload;
  };
  // What was sent so far, in order.
  const std::vector<sent_command>& sent();
  // What is scheduled and not yet due (keys as the manager's schedule() gave them, scoped
  // "<manager>:<key>").
  std::vector<scheduled_command> scheduled();
  // The state of `instance` as JSON; null when it has none (never seen, or completed).
  json state(std::string_view instance);
  // The kit's clock.
  std::chrono::system_clock::time_point now() const {
    return std::chrono::system_clock::time_point(std::chrono::milliseconds(*now_));
  }

  // Then: the commands of type C sent so far are exactly `expected`, in order.
  template <class C>
  verdict then_sent(const std::vector<C>& expected) {
    json got = json::array();
    for (const auto& s : sent())
      if (s.command == info_of<C>().wire_name) got.push_back(s.payload);
    return compare("sent", got, to_json(expected));
  }
  // Then: the commands of type C scheduled and not yet due are exactly `expected`, soonest first.
  template <class C>
  verdict then_scheduled(const std::vector<C>& expected) {
    json got = json::array();
    for (const auto& s : scheduled())
      if (s.command == info_of<C>().wire_name)
        got.push_back(parse_json(s.payload).value_or(json()));
    return compare("scheduled", got, to_json(expected));
  }

  cleave::projector& projector() noexcept { return *projector_; }
  cleave::store& store() noexcept { return *store_; }

 private:
  struct init {};
  explicit process_kit(init);
  void settle();
  static verdict compare(std::string_view what, const json& got, const json& expected);

  // Held apart, so the kit moves while the projector and scheduler keep their addresses.
  std::shared_ptr<std::int64_t> now_;
  std::unique_ptr<sqlite::store> store_;
  std::unique_ptr<cleave::projector> projector_;
  std::unique_ptr<cleave::scheduler> scheduler_;
  // What the manager sent, and the refusals asked for.
  struct outbox {
    std::vector<sent_command> sent;
    std::vector<std::pair<std::string, error>> refusals;
    // Takes a command as the command bus would (its schedule claimed in a transaction of its
    // own, a cancelled one not run), but runs no handler.
    result<json_outcome> take(cleave::store& db, std::string_view wire_name, const json& payload,
                              const request_meta& meta);
  };
  std::unique_ptr<outbox> taken_ = std::make_unique<outbox>();
  std::string name_;
};

}  // namespace cleave::testing
