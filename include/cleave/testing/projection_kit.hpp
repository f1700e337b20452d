#pragma once
// given / then for a user's projections, on an in-memory SQLite database: given these events
// (and, for a materialized view, these rows), then the view holds these rows. Independent of the
// test framework: each `then` returns a verdict.
//
//   cleave::testing::projection_kit kit{shop::order_summaries()};
//   kit.given("o1", order_placed{...}, order_cancelled{"o1"});
//   auto v = kit.then_rows("select order_id, status from {view}",
//                          std::vector<order_row>{{"o1", "cancelled"}});
//   EXPECT_TRUE(v) << v.why;

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <cleave/read/projector.hpp>
#include <cleave/sqlite/store.hpp>
#include <cleave/testing/kit.hpp>

namespace cleave::testing {

class projection_kit {
 public:
  // A fresh in-memory database with `migrations` applied (as `component`; for views that read
  // the application's tables), and `p` registered in whatever mode it was declared.
  explicit projection_kit(projection p, std::span<const migration> migrations = {},
                          std::string_view component = "app");
  // The same, reading the log through `rewrites` (copied), as the application's projector does.
  projection_kit(projection p, const upcasters& rewrites,
                 std::span<const migration> migrations = {}, std::string_view component = "app");

  // Given: these events appended to `stream` in one transaction (inline projections apply them
  // in it); the async worker's part is done before the next `then`.
  template <class... E>
  projection_kit& given(std::string_view stream, const E&... events) {
    detail::append_events(projector_->source(), stream, events...);
    return *this;
  }
  // Given: an event as an older release stored it (its type and payload then), which the view
  // reads through the kit's upcasters.
  projection_kit& given_stored(std::string_view stream, std::string_view type,
                               const json& payload) {
    detail::append_stored(projector_->source(), stream, type, payload);
    return *this;
  }
  // Given: state written by SQL (the tables a materialized view reads).
  projection_kit& given_sql(std::string_view sql) {
    detail::run_sql(*store_, sql);
    return *this;
  }

  // The view's rows as T (a CLEAVE_RECORD or a scalar), `{view}` standing for its table, after
  // the projector has caught up.
  template <class T>
  std::vector<T> rows(std::string_view sql) {
    settle();
    read_scope tx(*store_, cleave::detail::no_meta);
    read_context ctx(&*tx, cleave::detail::no_meta);
    return ctx.many<T>(expand_view(sql, table_));
  }

  // Then: `sql` returns exactly `expected`, in order (compared as JSON).
  template <class T>
  verdict then_rows(std::string_view sql, const std::vector<T>& expected) {
    return compare(to_json(rows<T>(sql)), to_json(expected));
  }
  // Then: this many events were parked as dead letters.
  verdict then_dead_letters(std::size_t n);

  cleave::projector& projector() noexcept { return *projector_; }
  cleave::store& store() noexcept { return *store_; }

 private:
  void settle();
  static verdict compare(const json& got, const json& expected);

  // Held apart, so the kit moves while the projector keeps their addresses.
  std::unique_ptr<sqlite::store> store_;
  std::unique_ptr<upcasters> rewrites_;
  std::string name_, table_;
  std::unique_ptr<cleave::projector> projector_;
};

}  // namespace cleave::testing
