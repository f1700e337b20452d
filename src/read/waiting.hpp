#pragma once
// Parked waits: one thread re-reads, on each wake-up, the checkpoints (or staleness) the parked
// waits need and calls back those that are done or past their deadline; it also holds the store's
// progress watch while anyone waits and this projector does not lead. Internal to src/read.

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include <cleave/read/projector.hpp>

#include "internal.hpp"

namespace cleave {

using namespace read_detail;

class projector::waiting {
 public:
  explicit waiting(projector& owner) : owner_(owner) {}
  ~waiting() { stop(); }
  // Ends the thread; waits still parked are dropped (their readers are gone by now).
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      if (watch_) watch_->interrupt();
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  bool park(std::vector<std::string> names, consistency wanted, clock::time_point deadline,
            std::function<void()> ready, std::size_t limit) {
    {
      std::lock_guard lock(mutex_);
      if (count_ >= limit) return false;
      parked_.push_back({std::move(names), wanted, deadline, std::move(ready)});
      ++count_;
      start_locked();
      poke_locked();
    }
    wake_.notify_all();
    return true;
  }
  std::size_t parked() const {
    std::lock_guard lock(mutex_);
    return count_;
  }
  // A blocking waiter (wait_for, wait_fresh) on projection `name` begins / ends. The progress
  // watch is made before it first looks, so no batch committed after that look goes unnoticed.
  void enter(std::string_view name) {
    {
      std::lock_guard lock(mutex_);
      ++blocking_;
      auto it = blocking_names_.find(name);
      if (it == blocking_names_.end()) it = blocking_names_.emplace(name, 0).first;
      ++it->second;
      start_locked();
    }
    wake_.notify_all();
    ensure_watch();
  }
  void leave(std::string_view name) {
    std::lock_guard lock(mutex_);
    --blocking_;
    if (auto it = blocking_names_.find(name); --it->second == 0) blocking_names_.erase(it);
  }
  // Something may have moved (a batch here, a new wait): look again.
  void poke() {
    {
      std::lock_guard lock(mutex_);
      poke_locked();
    }
    wake_.notify_all();
  }

 private:
  struct parked_wait {
    std::vector<std::string> names;
    consistency wanted;
    clock::time_point deadline;
    std::function<void()> ready;
    bool head_checked = false;
  };
  // How long the watch is kept after the last waiter left (a PostgreSQL LISTEN that nobody
  // reads would hold back the server's notification queue).
  static constexpr auto idle_grace = std::chrono::seconds(1);

  void start_locked() {
    if (!thread_.joinable() && !stopping_) thread_ = std::thread([this] { run(); });
  }
  void poke_locked() {
    poked_ = true;
    if (watch_) watch_->interrupt();
  }
  bool busy_locked() const { return count_ > 0 || blocking_ > 0; }
  // Makes the progress watch unless this projector leads (then every batch is its own). One
  // thread makes it (a connection, on PostgreSQL); the others wait for that one.
  void ensure_watch() {
    std::unique_lock lock(mutex_);
    wake_.wait(lock, [&] { return !making_watch_; });
    if (watch_ || owner_.leading()) return;
    making_watch_ = true;
    lock.unlock();
    std::unique_ptr<commit_watch> made;
    try {
      made = owner_.db_.watch_progress();
    } catch (const std::exception& e) {
      spdlog::warn("projector: cannot watch for progress ({}); waiters poll", e.what());
    }
    lock.lock();
    making_watch_ = false;
    watch_ = std::move(made);
    lock.unlock();
    wake_.notify_all();
  }

  void run() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      if (!busy_locked()) {
        if (!wake_.wait_for(lock, idle_grace, [&] { return stopping_ || busy_locked(); })) {
          auto idle = std::move(watch_);
          lock.unlock();
          idle.reset();
          lock.lock();
          wake_.wait(lock, [&] { return stopping_ || busy_locked(); });
        }
        continue;
      }
      poked_ = false;
      auto waits = std::exchange(parked_, {});
      // Blocking waiters are woken here only for progress made elsewhere (this process's own
      // batches wake them directly).
      std::vector<std::string> blocked;
      if (watch_ && !owner_.leading())
        for (const auto& [name, n] : blocking_names_) blocked.push_back(name);
      lock.unlock();
      ensure_watch();  // before the look: a batch committed after it wakes the watch
      std::vector<std::function<void()>> ready;
      std::map<std::string, position_token, std::less<>> at;
      const auto next = evaluate(waits, ready, at);
      for (auto& r : ready) r();
      if (moved(blocked, at)) owner_.wake_blocked();
      lock.lock();
      count_ -= ready.size();
      for (auto& w : waits) parked_.push_back(std::move(w));
      if (stopping_ || poked_) continue;
      // The safety net, as for blocking waiters: a wake-up lost (a dropped connection) costs
      // this much at most.
      const auto until = std::min(next, clock::now() + std::chrono::milliseconds(200));
      if (!watch_ || owner_.leading()) {  // leading: every batch is this process's own
        wake_.wait_until(lock, until, [&] { return stopping_ || poked_; });
        continue;
      }
      lock.unlock();
      watch_->wait_until(until);  // (interrupted by poke() and by the destructor)
      lock.lock();
      // Woken from outside (another process's batch; on SQLite, any commit): look again.
      if (clock::now() < until) poked_ = true;
    }
  }

  // Whether any of the projections `names` is somewhere else than when last looked at (reads
  // those `at` lacks into it).
  bool moved(const std::vector<std::string>& names,
             std::map<std::string, position_token, std::less<>>& at) {
    bool any = false;
    for (const auto& name : names) {
      auto it = at.find(name);
      try {
        if (it == at.end()) it = at.emplace(name, owner_.checkpoint(name)).first;
      } catch (const std::exception&) {
        return true;  // the waiter's own look meets it
      }
      auto [seen, fresh] = last_seen_.try_emplace(name, it->second);
      if (fresh || seen->second != it->second) any = true;
      seen->second = it->second;
    }
    return any;
  }

  // Keeps in `waits` those not done yet and moves the callbacks of the others to `ready`;
  // returns the earliest deadline of those kept. The checkpoints read go into `at`.
  clock::time_point evaluate(std::vector<parked_wait>& waits,
                             std::vector<std::function<void()>>& ready,
                             std::map<std::string, position_token, std::less<>>& at) {
    const auto now = clock::now();
    std::map<std::string, std::chrono::milliseconds, std::less<>> stale;
    std::optional<position_token> head;
    auto head_now = [&] {
      if (!head) head = owner_.db_.head();
      return *head;
    };
    bool behind = false;
    auto done = [&](parked_wait& w) {
      if (w.deadline <= now) return true;
      const auto& wanted = w.wanted;
      if (wanted.required == consistency::level::bounded) {
        for (const auto& name : w.names) {
          auto it = stale.find(name);
          if (it == stale.end()) it = stale.emplace(name, owner_.staleness(name)).first;
          if (it->second > wanted.max_staleness) return false;
        }
        return true;
      }
      if (wanted.required == consistency::level::strong && wanted.token.empty())
        w.wanted.token = head_now();  // every commit before the wait began
      if (w.wanted.token.empty()) return true;
      for (const auto& name : w.names) {
        const auto mode = owner_.mode_of(name);
        if (mode == projection_mode::inline_) continue;
        auto it = at.find(name);
        if (it == at.end()) it = at.emplace(name, owner_.checkpoint(name)).first;
        if (!(it->second < w.wanted.token)) continue;
        // Behind: first make sure the token is one the log can have issued.
        if (!std::exchange(w.head_checked, true) && !token_within(w.wanted.token, head_now()))
          return true;
        if (mode == projection_mode::materialized) owner_.refresh_wanted_ = true;
        return false;
      }
      return true;
    };
    auto earliest = clock::time_point::max();
    std::size_t kept = 0;
    for (auto& w : waits) {
      bool finished = true;
      try {
        finished = done(w);
      } catch (const std::exception& e) {
        // The read itself meets the same failure and answers it.
        spdlog::debug("projector: a parked wait ends early: {}", e.what());
      }
      if (finished) {
        ready.push_back(std::move(w.ready));
        continue;
      }
      behind = true;
      earliest = std::min(earliest, w.deadline);
      if (&waits[kept] != &w) waits[kept] = std::move(w);
      ++kept;
    }
    waits.resize(kept);
    if (behind) owner_.notify();  // the worker may be asleep while events are waiting
    return earliest;
  }

  projector& owner_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<parked_wait> parked_;  // those not being evaluated now
  std::size_t count_ = 0;            // parked, including those being evaluated
  std::size_t blocking_ = 0;
  std::map<std::string, std::size_t, std::less<>> blocking_names_;  // waiters per projection
  std::map<std::string, position_token, std::less<>> last_seen_;    // the thread's alone
  bool poked_ = false, stopping_ = false, making_watch_ = false;
  std::unique_ptr<commit_watch> watch_;
  std::thread thread_;
};

}  // namespace cleave
