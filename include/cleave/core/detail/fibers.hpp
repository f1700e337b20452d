#pragma once
// Fibers for callers that would otherwise hold a thread while they wait. A fiber_pool runs jobs as
// fibers on the thread that owns it (an HTTP server's I/O thread), and code that waits inside a
// job — group commit waiting for its group or its lane, a retry's pause — suspends the fiber
// instead of blocking the thread. Group commit then needs no thread per command in flight: the I/O
// thread runs a command until it waits in its lane, a runner thread commits the group, and the I/O
// thread goes on with the command's answer.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include <cleave/core/function_ref.hpp>

namespace cleave::detail {

// Tells a host that something one of its suspended fibers waits for may have happened, so that
// it looks. Safe from any thread, and after the host is gone (the wake is then dropped).
struct fiber_inbox;
using fiber_waker = std::shared_ptr<fiber_inbox>;
void wake(const fiber_waker& w) noexcept;

// What runs the calling fiber, for code that waits.
class fiber_host {
 public:
  // The host of the running fiber when the fiber may be suspended here, else null: on a plain
  // thread, and inside a catch block or an unwinding (a thread's exceptions in flight are its
  // own: a fiber switched away then would leave them to another).
  static fiber_host* current() noexcept;
  // The host of the running fiber, suspendable or not (null on a plain thread). Code that waits
  // where it may not suspend must not block the host's thread on work only the host would do.
  static fiber_host* running() noexcept;

  // Suspends the running fiber until `ready()` holds. The host checks it when woken (waker())
  // and, if `recheck` is not zero, at least that often.
  virtual void suspend_until(function_ref<bool()> ready,
                             std::chrono::microseconds recheck = std::chrono::microseconds(0)) = 0;
  // What wakes this host (for another thread that ends what a fiber waits for).
  virtual fiber_waker waker() const = 0;

 protected:
  ~fiber_host() = default;
};

// Waits `d`: suspends the running fiber when it may be, else sleeps the thread.
void pause(std::chrono::microseconds d);

// Fibers run on the thread that owns the pool: start() runs a job until it ends or suspends,
// check() resumes the suspended fibers that may go on. The owner calls check() when the pool asks
// (`schedule_check`, from any thread: when woken, or after `delay` for a recheck) — an event loop
// posts it to itself. Stacks are `stack_bytes` each (a guard page below), kept for reuse.
class fiber_pool final : public fiber_host {
 public:
  using job = std::move_only_function<void()>;
  using check_scheduler = std::function<void(std::chrono::microseconds delay)>;

  explicit fiber_pool(check_scheduler schedule_check,
                      std::size_t stack_bytes = std::size_t{512} * 1024);
  // A fiber still suspended is never resumed; its stack is kept (what it waits for may read it).
  ~fiber_pool();
  fiber_pool(const fiber_pool&) = delete;
  fiber_pool& operator=(const fiber_pool&) = delete;

  // Runs `j` as a fiber until it ends or suspends. A job should not throw: what one throws is
  // logged and dropped.
  void start(job j);
  // Resumes the suspended fibers whose wait is over.
  void check();
  std::size_t suspended() const noexcept { return waiting_.size(); }

  void suspend_until(function_ref<bool()> ready, std::chrono::microseconds recheck) override;
  fiber_waker waker() const override { return inbox_; }

  // Whether fibers can run in this build (they cannot under a sanitizer that does not follow
  // stack switches); when not, the owner keeps to threads.
  static bool available() noexcept;

 private:
  struct fiber;
  bool resume(fiber& f);  // true when it ended its job
  void settle(std::unique_ptr<fiber> f, bool ended);

  std::size_t stack_bytes_;
  fiber_waker inbox_;
  std::vector<std::unique_ptr<fiber>> spare_;    // ended fibers, their stacks kept
  std::vector<std::unique_ptr<fiber>> waiting_;  // suspended fibers
  struct context;
  std::unique_ptr<context> main_;  // the owner's context, while a fiber runs
};

}  // namespace cleave::detail
