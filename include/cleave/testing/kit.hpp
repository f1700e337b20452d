#pragma once
// given / when / then for a user's command handlers and aggregates, on an in-memory SQLite
// database — independent of the test framework: each `then` returns a verdict that is true, or
// false with what differed.
//
//   cleave::testing::command_kit kit{my_migrations};
//   kit.commands().add(withdraw_handler);
//   kit.given("acc-1", account_opened{"acc-1"}, money_deposited{"acc-1", 50})
//      .when(withdraw{"acc-1", 80});
//   auto v = kit.then_error(cleave::errc::rejected, "insufficient");
//   EXPECT_TRUE(v) << v.why;

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/core/bus.hpp>
#include <cleave/core/json.hpp>
#include <cleave/sqlite/store.hpp>

namespace cleave::testing {

// The outcome of a check.
struct verdict {
  bool ok = true;
  std::string why;  // what differed, when !ok
  explicit operator bool() const noexcept { return ok; }
};

// An event as compared by the kit: its wire name and its JSON payload.
struct expected_event {
  std::string type;
  json payload;
};

template <class E>
expected_event as_expected(const E& e) {
  static_assert(event<E>, "then_events() takes events declared with CLEAVE_EVENT");
  return {std::string(info_of<E>().wire_name), to_json(e)};
}

namespace detail {

// Appends `events` to `stream` in one transaction from `source`.
template <class... E>
void append_events(session_source& source, std::string_view stream, const E&... events) {
  write_scope tx(source, cleave::detail::no_meta);
  write_context ctx(&*tx, cleave::detail::no_meta);
  (ctx.emit(stream, events), ...);
  tx.commit();
}

// Appends one event as it is stored — `type` and `payload` as an older release wrote them — to
// `stream`, in a transaction of its own.
void append_stored(session_source& source, std::string_view stream, std::string_view type,
                   const json& payload);

// Runs `sql` (statements without parameters) in one transaction from `source`.
void run_sql(session_source& source, std::string_view sql);

}  // namespace detail

class command_kit {
 public:
  // A fresh in-memory database with cleave's tables and `migrations` applied (as `component`).
  explicit command_kit(std::span<const migration> migrations = {},
                       std::string_view component = "app");

  cleave::command_bus& commands() noexcept { return *commands_; }
  cleave::store& store() noexcept { return *store_; }

  // Given: these events already in `stream`, in order.
  template <class... E>
  command_kit& given(std::string_view stream, const E&... events) {
    detail::append_events(*store_, stream, events...);
    return *this;
  }
  // Given: an event as an older release stored it (its type and payload then), for aggregates
  // and views that read it through upcasters.
  command_kit& given_stored(std::string_view stream, std::string_view type, const json& payload) {
    detail::append_stored(*store_, stream, type, payload);
    return *this;
  }
  // Given: any state, written by SQL (one statement or several, separated by `;`).
  command_kit& given_sql(std::string_view sql) {
    detail::run_sql(*store_, sql);
    return *this;
  }

  // When: sends the command and keeps its outcome and the events it appended.
  template <class C>
  command_kit& when(const C& command_message, const request_meta& meta = cleave::detail::no_meta) {
    const auto before = store_->head();
    auto r = commands_->send(command_message, meta);
    if (r) {
      if constexpr (std::is_void_v<response_t<C>>) {
        last_ = json_outcome{json(nullptr), r->position};
      } else {
        last_ = json_outcome{to_json(r->value), r->position};
      }
    } else {
      last_ = std::unexpected(std::move(r.error()));
    }
    appended_ = store_->read_events(before, 10'000);
    return *this;
  }

  // Then: the command succeeded and appended exactly these events, in this order.
  template <class... E>
  verdict then_events(const E&... expected) const {
    return check_events({as_expected(expected)...});
  }
  // Then: the command succeeded and appended nothing.
  verdict then_no_events() const { return check_events({}); }
  // Then: the command succeeded with this response (compared as JSON).
  template <class R>
  verdict then_response(const R& expected) const {
    return check_response(to_json(expected));
  }
  // Then: the command failed with `category`, its message containing `text`.
  verdict then_error(errc category, std::string_view text = {}) const;

  // Runs `reader(const cleave::read_context&)` in a read transaction and returns what it
  // returns: to load an aggregate as a handler would, or read a table.
  //   auto acc = kit.read([&](const cleave::read_context& tx) { return accounts.load(tx, "a1"); });
  template <class F>
  auto read(F&& reader) {
    read_scope tx(*store_, cleave::detail::no_meta);
    const read_context ctx(&*tx, cleave::detail::no_meta);
    return std::forward<F>(reader)(ctx);
  }

  // The last outcome, for checks of your own; the events it appended.
  const result<json_outcome>& outcome() const;
  const std::vector<stored_event>& appended() const noexcept { return appended_; }

 private:
  verdict check_events(const std::vector<expected_event>& expected) const;
  verdict check_response(const json& expected) const;

  // Held apart: the kit moves, and handlers registered on the bus keep what they point to.
  std::unique_ptr<sqlite::store> store_;
  std::unique_ptr<cleave::command_bus> commands_;
  std::optional<result<json_outcome>> last_;
  std::vector<stored_event> appended_;
};

}  // namespace cleave::testing
