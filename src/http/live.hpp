#pragma once
// Live streams (Server-Sent Events): the hub that watches what live queries read and the log's
// head, and hands each stream its next event. One thread looks every `tick`: a query whose
// views moved past what it last answered is run again once for all its subscribers with the
// same request (coalesced), and the new answer replaces whatever a subscriber has not written
// yet — a slow subscriber holds one event, never a queue. Event-feed subscribers are only woken
// when the head moves: they read the log themselves. Internal to src/http.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <cleave/app/app.hpp>

#include "router.hpp"

namespace cleave::http::detail {

// One stream's mailbox: the latest event not written yet, and how to wake its writer.
struct live_subscriber {
  std::mutex mutex;
  std::optional<std::string> pending;  // under mutex; replaced, never queued
  std::function<void()> wake;          // set before subscribing; called from the hub's thread
  std::atomic<bool> poked{false};      // something happened since the writer last looked
  std::atomic<bool> gone{false};       // the client closed its end

  // Stores `event` (replacing an unwritten one) and wakes the writer.
  void deliver(std::string event);
  // Wakes the writer with no event (the log moved: it reads it).
  void poke();
  std::optional<std::string> take();
};

// "id: <id>\nevent: <type>\ndata: <data>\n\n" (data on one line: JSON has no raw newlines).
std::string sse_event(std::string_view id, std::string_view type, std::string_view data);

// The "result" member of a query's answer (as GET answers it), dumped: what live streams compare.
std::string result_of(const std::string& body);
// A live query's event id: "<position>/<hash of the result>". A stream resumed with it sends
// nothing until the result differs from the one it names (the position only tells where the
// views were).
std::string live_event_id(std::string_view position, std::string_view result);
// Whether `last_event_id` (a resumed stream's) names this result.
bool names_result(std::string_view last_event_id, std::string_view result);

class live_hub {
 public:
  live_hub(app& a, router& r, std::chrono::milliseconds tick = std::chrono::milliseconds(10));
  ~live_hub();
  live_hub(const live_hub&) = delete;
  live_hub& operator=(const live_hub&) = delete;

  // Takes a place for a new stream; false when max_live_streams are open. release() gives it
  // back.
  bool reserve();
  void release();
  std::size_t open_streams() const { return open_.load(); }

  // Subscribes to query request `query` (a GET /queries/{name}?… request, as the router takes
  // it), whose answer `body` the subscriber has, read at `position` (the position of the views
  // read before the query ran). When the streams already asking the same thing have a newer
  // answer that differs, the subscriber gets it at once.
  void watch_query(const request& query, std::string name, std::string position, std::string body,
                   const std::shared_ptr<live_subscriber>& s);
  // Subscribes to the log's head: woken (with no event) when it moves.
  void watch_log(const std::shared_ptr<live_subscriber>& s);
  void forget(const std::shared_ptr<live_subscriber>& s);

  // Stops the hub's thread, then wakes every stream (which, the server stopping, ends).
  void stop();

 private:
  struct query_group {
    request query;
    std::string name;
    std::string position;          // where the views were (before the last answer was read)
    std::string body;              // the last answer sent, as GET answers it
    std::string result;            // its "result" member, dumped: what is compared
    clock::time_point retry_at{};  // after an answer that was not a 200
    std::vector<std::weak_ptr<live_subscriber>> subscribers;
  };
  void run();
  void look();  // one tick

  app& app_;
  router& router_;
  std::chrono::milliseconds tick_;
  std::atomic<std::size_t> open_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;                                     // under mutex_
  std::map<std::string, query_group> groups_;                 // by request key; under mutex_
  std::vector<std::weak_ptr<live_subscriber>> log_watchers_;  // under mutex_
  position_token head_;                                       // the hub thread's
  std::thread thread_;
};

}  // namespace cleave::http::detail
