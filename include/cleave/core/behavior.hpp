#pragma once
// Pipeline behaviors: middleware that runs around every handler on a bus (validation, logging,
// timing, retry, auth, ...). A behavior declares which bus it is for; the buses refuse, at compile
// time, a behavior declared for the other kind of message.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/core/error.hpp>
#include <cleave/core/function_ref.hpp>
#include <cleave/core/json.hpp>
#include <cleave/core/message.hpp>
#include <cleave/core/session.hpp>

namespace spdlog {
class logger;
}

namespace cleave {

enum class applies_to { commands, queries, both };

// Type-specific operations on a message, one static table per message type.
struct message_ops {
  const message_info* info;
  result<void> (*validate)(const void*);
  json (*to_json)(const void*);
  json (*schema)();            // the message's JSON Schema
  json (*response_schema)();   // the JSON Schema of what its handler returns
  bool cache_answers = false;  // a query that says `static constexpr bool cache_answers = true;`
};

// A message as behaviors see it, without knowing its type. Valid for the duration of the call.
class message_ref {
 public:
  message_ref(const void* message, const message_ops& ops, std::size_t slot) noexcept
      : message_(message), ops_(&ops), slot_(slot) {}

  const message_info& info() const noexcept { return *ops_->info; }
  // Dense index of the message type among the handlers of the bus, for per-type state.
  std::size_t slot() const noexcept { return slot_; }
  // The message's own validate() result, or success when it declares none.
  result<void> validate() const { return ops_->validate(message_); }
  json to_json() const { return ops_->to_json(message_); }
  // The message itself when it is a T, else null.
  template <class T>
  const T* get() const noexcept {
    return ops_->info == &info_of<T>() ? static_cast<const T*>(message_) : nullptr;
  }

 private:
  const void* message_;
  const message_ops* ops_;
  std::size_t slot_;
};

// The rest of the pipeline after a behavior: the next behaviors, then the handler in its own
// transaction. A behavior may call it zero times (short-circuit) or several times (retry).
// Called with a request_meta, the steps after it see that one instead of the behavior's own (a
// copy with a field changed: read_your_writes sends a query whose views it waited for to the
// primary, where those views are); it must outlive the call.
class next_step {
 public:
  next_step(function_ref<result<void>(const request_meta&)> rest, const request_meta& meta) noexcept
      : rest_(rest), meta_(&meta) {}
  result<void> operator()() const { return rest_(*meta_); }
  result<void> operator()(const request_meta& meta) const { return rest_(meta); }

 private:
  function_ref<result<void>(const request_meta&)> rest_;
  const request_meta* meta_;
};

// Base of every behavior. Implementations are called concurrently from many threads.
class behavior {
 public:
  virtual ~behavior() = default;
  // Called once for each message type the bus handles, before any dispatch; the slot is the
  // message_ref::slot() of that type. Not called concurrently with handle().
  virtual void on_register(const message_info& /*info*/, std::size_t /*slot*/) {}
  // Runs around the handler. Returns what next() returned, or an error of its own.
  virtual result<void> handle(const message_ref& message, const request_meta& meta,
                              next_step next) = 0;
};

template <class B>
concept behavior_type = std::derived_from<B, behavior> && requires {
  { B::scope } -> std::convertible_to<applies_to>;
};

// Runs the message's validate(), if it declares one, before anything else happens.
class validation final : public behavior {
 public:
  static constexpr applies_to scope = applies_to::both;
  result<void> handle(const message_ref& message, const request_meta& meta,
                      next_step next) override;
};

// Logs each dispatch through spdlog: debug on success, info on an expected failure, error on an
// internal one. Pass a logger, or get spdlog's default one.
class logging final : public behavior {
 public:
  static constexpr applies_to scope = applies_to::both;
  explicit logging(std::shared_ptr<spdlog::logger> logger = nullptr);
  result<void> handle(const message_ref& message, const request_meta& meta,
                      next_step next) override;

 private:
  std::shared_ptr<spdlog::logger> logger_;
};

// Counts dispatches, failures and time spent per message type. Lock-free on the hot path.
class timing final : public behavior {
 public:
  static constexpr applies_to scope = applies_to::both;

  struct figures {
    std::uint64_t count = 0;
    std::uint64_t failures = 0;
    std::chrono::nanoseconds total{0};
    std::chrono::nanoseconds max{0};
  };

  void on_register(const message_info& info, std::size_t slot) override;
  result<void> handle(const message_ref& message, const request_meta& meta,
                      next_step next) override;
  // The figures for a wire name so far; nullopt for a name this bus does not handle.
  std::optional<figures> figures_for(std::string_view wire_name) const;

 private:
  struct counters {
    const message_info* info = nullptr;
    std::atomic<std::uint64_t> count{0}, failures{0}, total_ns{0}, max_ns{0};
  };
  std::deque<counters> slots_;  // deque: growing it never moves the atomics
};

// Refuses a message whose type requires a role the caller's principal (request_meta::principal)
// lacks: errc::unauthorized for an anonymous caller (no subject), errc::forbidden for one without
// the role. The same rule then holds for every transport and for in-process callers. Roles are
// given by wire name; a type not named is open to everyone. Add it first, so that nothing else
// runs for a refused caller.
class authorization final : public behavior {
 public:
  static constexpr applies_to scope = applies_to::both;
  explicit authorization(std::map<std::string, std::string, std::less<>> role_by_message)
      : role_by_message_(std::move(role_by_message)) {}
  void on_register(const message_info& info, std::size_t slot) override;
  result<void> handle(const message_ref& message, const request_meta& meta,
                      next_step next) override;

 private:
  std::map<std::string, std::string, std::less<>> role_by_message_;
  std::vector<const std::string*> role_by_slot_;  // null: no role required
};

// Runs a command again when it fails with errc::conflict (a concurrent change won), up to
// max_attempts in all, waiting a little longer each time. Each attempt is a new transaction.
class retry_on_conflict final : public behavior {
 public:
  static constexpr applies_to scope = applies_to::commands;
  explicit retry_on_conflict(int max_attempts = 3, std::chrono::microseconds first_backoff =
                                                       std::chrono::microseconds{200})
      : max_attempts_(max_attempts), first_backoff_(first_backoff) {}
  result<void> handle(const message_ref& message, const request_meta& meta,
                      next_step next) override;

 private:
  int max_attempts_;
  std::chrono::microseconds first_backoff_;
};

}  // namespace cleave
