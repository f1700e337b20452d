// Waiting for views: blocking waits (wait_for, wait_fresh) woken as batches commit, parked waits
// (no thread held) evaluated by the waiting part, and the announcements that wake both.

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "internal.hpp"
#include "waiting.hpp"

namespace cleave {

using namespace read_detail;

void projector::announce_progress() {
  db_.announce_progress();
  wake_waiters();
}

void projector::wake_waiters() {
  wake_blocked();
  waiting_->poke();
}

void projector::wake_blocked() {
  {
    std::lock_guard lock(progress_mutex_);
    ++progress_count_;
  }
  progress_.notify_all();
}

template <class Observe, class Done>
auto projector::await_progress(std::string_view name, Observe observe, Done done,
                               clock::time_point deadline) {
  waiting_->enter(name);
  struct leave_on_exit {
    waiting& w;
    std::string_view name;
    ~leave_on_exit() { w.leave(name); }
  } leave{*waiting_, name};
  for (;;) {
    std::uint64_t seen = 0;
    {
      std::lock_guard lock(progress_mutex_);
      seen = progress_count_;
    }
    // Observed outside the lock (it reads the database), so waiters never hold up the worker;
    // a batch committed meanwhile changes the count, and the wait below does not sleep.
    const auto now = observe();
    if (done(now) || clock::now() >= deadline) return now;
    notify();  // the worker may be asleep while events are waiting
    std::unique_lock lock(progress_mutex_);
    progress_.wait_until(lock, std::min(deadline, clock::now() + std::chrono::milliseconds(200)),
                         [&] { return progress_count_ != seen; });
  }
}

position_token projector::wait_for(std::string_view name, position_token token,
                                   clock::time_point deadline) {
  const auto mode = mode_of(name);
  if (mode == projection_mode::inline_) return token;
  if (mode == projection_mode::materialized)
    refresh_wanted_ = true;  // a reader waits: refresh now, not at the policy's pace
  bool head_checked = false;
  return await_progress(
      name, [&] { return checkpoint(name); },
      [&](position_token at) {
        if (!(at < token)) return true;
        // Behind: no use waiting for a token the log cannot have issued.
        return !std::exchange(head_checked, true) && !could_have_issued(token);
      },
      deadline);
}

bool projector::could_have_issued(position_token token) {
  return token_within(token, db_.head());
}

bool projector::park(std::vector<std::string> names, consistency wanted, clock::time_point deadline,
                     std::function<void()> ready, std::size_t limit) {
  return waiting_->park(std::move(names), wanted, deadline, std::move(ready), limit);
}

std::size_t projector::parked() const {
  return waiting_->parked();
}

std::chrono::milliseconds projector::wait_fresh(std::string_view name,
                                                std::chrono::milliseconds max,
                                                clock::time_point deadline) {
  return await_progress(
      name, [&] { return staleness(name); },
      [&](std::chrono::milliseconds stale) { return stale <= max; }, deadline);
}

}  // namespace cleave
