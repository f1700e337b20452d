#pragma once
// An in-memory view: a value of the application's own type, kept current from the event log by
// the projector (async, in batches) and read under a shared lock. It lives in the process, so it
// is built again from position 0 each time the process starts; use it for views that are cheap
// to rebuild and hot to read.
//
//   cleave::memory_view<std::map<std::string, int>> counts{"counts"};
//   counts.on([](const customer_registered& e, auto& state) { ++state[e.id]; });
//   projector.add(counts);
//   auto n = counts.read([](const auto& state) { return state.size(); });

#include <functional>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <cleave/core/detail/handler_traits.hpp>
#include <cleave/core/json.hpp>
#include <cleave/read/detail/event_handler.hpp>
#include <cleave/store/store.hpp>

namespace cleave {

class projector;

// What the projector sees of a memory view, whatever its state type.
class memory_view_base {
 public:
  explicit memory_view_base(std::string name) : name_(std::move(name)) {}
  virtual ~memory_view_base() = default;
  memory_view_base(const memory_view_base&) = delete;
  memory_view_base& operator=(const memory_view_base&) = delete;
  // Movable before it is registered (a projector keeps its address): factories may return one.
  memory_view_base(memory_view_base&& other) noexcept
      : name_(std::move(other.name_)),
        checkpoint_(other.checkpoint_),
        failures_(std::move(other.failures_)) {}
  memory_view_base& operator=(memory_view_base&&) = delete;

  const std::string& name() const noexcept { return name_; }
  // The position the log has been read through: every event up to it that the view handles is
  // applied (events of other types are not read).
  position_token checkpoint() const {
    std::shared_lock lock(mutex_);
    return checkpoint_;
  }
  // Events whose handler threw (skipped: a memory view has no transaction to roll back).
  std::vector<std::string> failures() const {
    std::shared_lock lock(mutex_);
    return failures_;
  }

 protected:
  friend class projector;
  // The stored types its handlers take (empty: none yet).
  virtual std::vector<std::string> event_types() const = 0;
  // Applies a batch under the exclusive lock and moves the checkpoint to `through`, the position
  // the log was read through (past events of types it does not handle).
  void apply(std::span<const stored_event> events, position_token through) {
    std::unique_lock lock(mutex_);
    for (const auto& e : events) {
      try {
        apply_one(e);
      } catch (const std::exception& failure) {
        failures_.push_back(
            fmt::format("{} at {}: {}", e.type, e.position.to_string(), failure.what()));
      }
    }
    if (checkpoint_ < through) checkpoint_ = through;
  }
  virtual void apply_one(const stored_event& e) = 0;

  mutable std::shared_mutex mutex_;

 private:
  std::string name_;
  position_token checkpoint_;
  std::vector<std::string> failures_;
};

template <class State>
class memory_view final : public memory_view_base {
 public:
  explicit memory_view(std::string name, State initial = {})
      : memory_view_base(std::move(name)), state_(std::move(initial)) {}
  // Before it is registered only (see memory_view_base).
  memory_view(memory_view&&) noexcept(std::is_nothrow_move_constructible_v<State>) = default;

  // Handles one event type: `void(const E&, State&)`, E a CLEAVE_EVENT.
  template <class F>
  memory_view& on(F&& handler) {
    detail::add_event_handler<State>(handlers_, std::forward<F>(handler));
    return *this;
  }

  // Calls `reader(const State&)` under the shared lock and returns what it returns.
  template <class F>
  auto read(F&& reader) const {
    std::shared_lock lock(mutex_);
    return std::forward<F>(reader)(static_cast<const State&>(state_));
  }

 private:
  std::vector<std::string> event_types() const override {
    std::vector<std::string> out;
    for (const auto& [type, handler] : handlers_) out.push_back(type);
    return out;
  }
  void apply_one(const stored_event& e) override {
    auto it = handlers_.find(e.type);
    if (it != handlers_.end()) it->second(e.payload, state_);
  }

  State state_;
  std::map<std::string, std::function<void(const event_payload&, State&)>, std::less<>> handlers_;
};

}  // namespace cleave
