#pragma once
// The application of the NATS tests, shared by the test binary and its helper process
// (nats_helper): numbered events on a few streams, and a command the inbox sends.

#include <cstdint>
#include <cstdlib>
#include <string>

#include <cleave/app/app.hpp>
#include <cleave/nats/nats.hpp>

namespace nats_test {

struct append {
  std::string stream;
  std::int64_t n = 0;
};
CLEAVE_COMMAND(append, "t.append", stream, n)

struct appended {
  std::string stream;
  std::int64_t n = 0;
};
CLEAVE_EVENT(appended, "t.appended", stream, n)

// A command the inbox sends: refused for a negative n.
struct take {
  std::string id;
  std::int64_t n = 0;
};
CLEAVE_COMMAND(take, "t.take", id, n)

struct taken {
  std::string id;
  std::int64_t n = 0;
};
CLEAVE_EVENT(taken, "t.taken", id, n)

inline cleave::nats::relay_options relay_options(const std::string& url) {
  cleave::nats::relay_options o;
  o.url = url;
  o.stream = "EVENTS";
  o.prefix = "ev";
  // Short, so that the tests see the relay republish past it (its own skip, not the server's
  // duplicate window, keeps the stream free of repeats).
  o.duplicate_window = std::chrono::seconds(1);
  o.max_backoff = std::chrono::milliseconds(500);
  o.ack_timeout = std::chrono::milliseconds(2000);
  return o;
}

inline cleave::nats::inbox_options inbox_options(const std::string& url) {
  cleave::nats::inbox_options o;
  o.url = url;
  o.stream = "ORDERS";
  o.routes = {{"orders.take", "t.take"}};
  o.max_backoff = std::chrono::milliseconds(500);
  o.ack_wait = std::chrono::milliseconds(1000);
  return o;
}

// The app on `database`, with the relay and the inbox against the server at `url`.
inline void install(cleave::app& a, const std::string& url) {
  a.commands().add([](const append& c, cleave::write_context& tx) -> cleave::result<void> {
    tx.emit(c.stream, appended{c.stream, c.n});
    return {};
  });
  a.commands().add([](const take& c, cleave::write_context& tx) -> cleave::result<void> {
    if (c.n < 0) return cleave::rejected("n must not be negative");
    tx.emit("take-" + c.id, taken{c.id, c.n});
    return {};
  });
  cleave::nats::add_relay(a, relay_options(url));
  cleave::nats::add_inbox(a, inbox_options(url));
}

}  // namespace nats_test
