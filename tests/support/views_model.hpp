#pragma once
// The model the read-side suites share: a customer's card view, its commands, events and query,
// and helpers that settle a projector on any backend.

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include <cleave/cleave.hpp>
#include <cleave/read/projector.hpp>

namespace views {

struct register_customer {
  std::string id;
  std::string name;
};
CLEAVE_COMMAND(register_customer, "views.register_customer", id, name)

struct customer_registered {
  std::string id;
  std::string name;
};
CLEAVE_EVENT(customer_registered, "views.customer_registered", id, name)

// An older name of customer_registered, and an event the card views do not handle.
struct customer_signed_up {
  std::string id;
  std::string name;
};
CLEAVE_EVENT(customer_signed_up, "views.customer_signed_up", id, name)
struct card_visited {
  std::string id;
};
CLEAVE_EVENT(card_visited, "views.card_visited", id)

struct card {
  std::string id;
  std::string name;
  std::int64_t visits = 0;
};
CLEAVE_RECORD(card, id, name, visits)

inline cleave::result<void> register_handler(const register_customer& c,
                                             cleave::write_context& tx) {
  tx.emit(c.id, customer_registered{c.id, c.name});
  if (c.name == "boom") throw std::runtime_error("after the event");
  return {};
}

inline cleave::projection cards(std::string name) {
  cleave::projection p{std::move(name)};
  p.schema("create table {view}(id text primary key, name text not null, visits bigint not null)")
      .on([](const customer_registered& e, cleave::view_context& v) {
        v.exec("insert into {view}(id, name, visits) values ($1, $2, 0)", e.id, e.name);
      });
  return p;
}

struct card_by_id {
  std::string id;
  using response = card;
};
CLEAVE_QUERY(card_by_id, "views.card_by_id", id)

inline std::int64_t rows(cleave::store& db, const std::string& table) {
  std::int64_t n = -1;
  auto& tx = db.begin_read({});
  tx.query("select count(*) from " + table, {},
           [&](const cleave::row_view& r) { n = std::get<std::int64_t>(r.get(0)); });
  tx.finish();
  return n;
}

// Waits until a gap-safe reader can see the whole log. On PostgreSQL a transaction running in
// any database of the cluster (another test's) holds readers back for a moment.
inline void wait_readable(cleave::store& db) {
  const auto head = db.head();
  const auto until = cleave::clock::now() + std::chrono::seconds(10);
  while (cleave::clock::now() < until) {
    auto seen = db.read_events({}, 1'000'000);
    if (head.empty() || (!seen.empty() && seen.back().position == head)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Catches up every async projection with the whole log; returns how many events that applied.
inline std::size_t settle(cleave::projector& p, std::size_t batch = 0) {
  wait_readable(p.log());
  return p.catch_up(batch);
}

// A poll so slow that a test passing in time shows the wake-up came from a commit.
inline cleave::projector_options slow_poll() {
  cleave::projector_options o;
  o.poll = std::chrono::seconds(30);
  return o;
}

}  // namespace views
