#pragma once
// The projector keeps projections current: inline ones inside each command's transaction (through
// the session source it hands to the command bus), async ones after commit, in batches, by a
// worker thread woken when a command commits (a slow poll is the safety net).
//
// Exactly-once in effect: an async batch changes the view and moves the projection's checkpoint
// in one transaction, with a compare-and-set on the checkpoint.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <cleave/read/projection.hpp>
#include <cleave/store/store.hpp>
#include <cleave/store/upcasting.hpp>

namespace cleave {

class projector {
 public:
  // `db` and `rewrites` are not owned and must outlive the projector.
  explicit projector(store& db, const upcasters* rewrites = nullptr);
  ~projector();
  projector(const projector&) = delete;
  projector& operator=(const projector&) = delete;

  // Registers a projection and creates its view (a migration of component "projection:<name>").
  // Register every projection before start() and before the first command.
  void add(projection p);

  // The session source for the command bus: the store's, with inline projections applied as
  // each event is appended, and the async worker woken after each commit.
  session_source& source() noexcept;

  // Starts / stops the async worker. stop() lets the batch in progress finish.
  void start(std::chrono::milliseconds poll = std::chrono::seconds(1));
  void stop();
  // Wakes the worker now.
  void notify();

  // Applies every event the async projections have not seen yet, in batches of `batch`, on the
  // calling thread; returns how many events were applied (to each projection, summed).
  std::size_t catch_up(std::size_t batch = 500);

  // An event whose handler kept failing, set aside so the projection could go on.
  struct dead_letter {
    position_token position;
    std::string type;
    json payload;
    std::string error;
  };
  // How many times an async batch is tried again when a handler fails on one of its events
  // before that event is parked as a dead letter (default 3). Set before start().
  void set_max_attempts(int n) noexcept { max_attempts_ = n < 1 ? 1 : n; }
  // The events parked for `name`, oldest first.
  std::vector<dead_letter> dead_letters(std::string_view name);
  // Applies the parked events of `name` again, each in its own transaction; those that now
  // succeed leave the dead letters. Returns how many did.
  std::size_t replay_dead_letters(std::string_view name);

  // Where an async projection has got to in the log (an inline one is always current).
  position_token checkpoint(std::string_view name);

  // Waits until projection `name` has reached `token` or `deadline` passes; returns where it
  // got to. Woken as batches commit.
  position_token wait_for(std::string_view name, position_token token, clock::time_point deadline);

 private:
  class inline_source;
  std::size_t catch_up_one(const projection& p, std::size_t batch);
  const projection& find(std::string_view name) const;

  store& db_;
  const upcasters* rewrites_;
  std::vector<projection> projections_;
  std::unique_ptr<inline_source> source_;
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  std::mutex progress_mutex_;
  std::condition_variable progress_;  // notified after each committed batch
  bool woken_ = false;
  std::atomic<bool> running_{false};
  std::thread worker_;
  int max_attempts_ = 3;
  std::mutex failures_mutex_;
  std::map<std::string, int, std::less<>> failures_;  // "projection@position" -> failed tries
};

}  // namespace cleave
