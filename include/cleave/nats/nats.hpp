#pragma once
// Events out to NATS JetStream, and messages in from it (module cleave::nats, its own target).
//
//   cleave::nats::relay_options out;                 // every event, to stream CLEAVE_EVENTS
//   out.url = "nats://127.0.0.1:4222";
//   cleave::nats::add_relay(app, out);               // `app relay` runs it as its own process
//
//   cleave::nats::inbox_options in;                  // a durable consumer of stream ORDERS
//   in.stream = "ORDERS";
//   in.routes = {{"orders.place", "shop.place_order"}};
//   cleave::nats::add_inbox(app, in);                // `app inbox run | dead-letters | replay`
//
// The relay is an async projection with a sink (projection::sink) in projector group "relay":
// elected like any other (its own lease), its lag in status, /metrics and the admin page. It
// publishes each event to `<prefix>.<event type>` with `Nats-Msg-Id` = the event's position, so
// the server drops what it already holds, and expects the stream's last sequence to be the one
// before each publish (`Nats-Expected-Last-Sequence`), so no event is stored ahead of one that
// was lost: per-stream (and log) order holds. Its checkpoint moves only after the server
// acknowledged the batch. A broker that is down is waited for (backoff), never skipped. The
// stream is the relay's own: a stream whose last message another publisher wrote is refused.
//
// The inbox turns each message into a command of this application, sent with the message's id
// as its command id — `@nats <stream>/<Nats-Msg-Id>`, or `seq:<stream sequence>@<the stream's
// creation>` for a message without one — so a redelivered message has one effect (a publisher's
// id is its idempotency key), and acknowledges it once the
// command's outcome is known; a refused command's message goes to the inbox's dead letters
// (table cleave_inbox_dead_letters), which can be replayed.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <cleave/app/app.hpp>
#include <cleave/read/projection.hpp>

namespace cleave::nats {

struct relay_options {
  std::string url = "nats://127.0.0.1:4222";
  std::string stream = "CLEAVE_EVENTS";  // the JetStream stream (created when missing)
  std::string prefix = "cleave";         // subjects are <prefix>.<event type>
  std::vector<std::string> types;        // the event types relayed; empty: all
  std::string name = "nats_relay";       // its projection: checkpoint, lag, admin
  std::string group = "relay";           // its projector group (`project --group relay`)
  // How long the server keeps message ids to drop duplicates (the stream's Duplicates window,
  // set when the relay makes the stream): a relay that died after publishing and comes back
  // within it republishes nothing twice. Past it, the relay still skips what the stream holds:
  // on connecting it reads the position in the stream's last message.
  std::chrono::seconds duplicate_window{120};
  std::chrono::milliseconds ack_timeout{5000};  // for a batch's acknowledgements
  std::chrono::milliseconds max_backoff{5000};  // between tries while the broker is down
};

// The message id of an event (its position, "<transaction>.<position>" in hex).
std::string message_id(const stored_event& e);

// The relay as a projection, to register with app.add_projection (add_relay does that).
projection relay(const relay_options& options);

// Registers relay(options) and the verb `relay` (runs the projector group options.group alone
// until SIGINT/SIGTERM).
void add_relay(app& a, const relay_options& options);

struct inbox_options {
  std::string url = "nats://127.0.0.1:4222";
  // The JetStream stream consumed; when missing it is made, over the routes' subjects.
  std::string stream;
  std::string consumer = "cleave_inbox";  // the durable consumer's name (created when missing)
  // Subject -> the command's wire name. A message on another subject is a dead letter.
  std::map<std::string, std::string> routes;
  principal runs_as{"inbox", {}};             // who the commands are sent as
  std::size_t batch = 100;                    // messages fetched at once
  std::chrono::milliseconds ack_wait{30000};  // before the server redelivers an unacked message
  std::chrono::milliseconds request_timeout{5000};
  std::chrono::milliseconds max_backoff{5000};
};

// The inbox: a durable pull consumer whose messages become commands.
class inbox {
 public:
  inbox(app& a, inbox_options options);
  ~inbox();
  inbox(const inbox&) = delete;
  inbox& operator=(const inbox&) = delete;

  // Fetches and handles messages until stop() (or, with `until_idle`, until a fetch comes back
  // empty); a broker that is down is waited for with backoff. Returns the messages handled.
  std::size_t run(bool until_idle = false);
  void stop();

  struct dead_letter {
    std::string message_id;
    std::string subject;
    std::string payload;
    std::string error;
    std::int64_t replays = 0;  // replays refused so far
  };
  // Messages whose command was refused (or that no route takes), oldest first.
  std::vector<dead_letter> dead_letters() const;
  // Sends the dead letters' commands again, replay n of a message under command id
  // `<its command id>~n` (one that ran before a crash is not run twice); those that now
  // succeed leave the list. Returns how many did.
  std::size_t replay_dead_letters();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Creates the inbox's table and adds the verb `inbox run | dead-letters | replay`.
void add_inbox(app& a, const inbox_options& options);

}  // namespace cleave::nats
