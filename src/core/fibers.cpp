#include <cleave/core/detail/fibers.hpp>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <mutex>
#include <new>
#include <optional>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

namespace cleave::detail {

namespace {
using steady = std::chrono::steady_clock;
thread_local fiber_pool* running_host = nullptr;  // while one of its fibers runs
}  // namespace

struct fiber_inbox {
  std::mutex mutex;                             // guards what follows
  fiber_pool::check_scheduler schedule;         // null once the pool is gone
  bool pending = false;                         // a check is scheduled and has not begun
  std::optional<steady::time_point> rechecked;  // when the next timed check is due (the owner's)
};

void wake(const fiber_waker& w) noexcept {
  if (!w) return;
  const std::lock_guard lock(w->mutex);
  if (!w->schedule || w->pending) return;
  w->pending = true;
  try {
    w->schedule(std::chrono::microseconds(0));
  } catch (...) {
    w->pending = false;  // (the host then finds the fiber ready at its next check)
  }
}

fiber_host* fiber_host::running() noexcept {
  return running_host;
}

fiber_host* fiber_host::current() noexcept {
  if (!running_host || std::uncaught_exceptions() > 0 || std::current_exception()) return nullptr;
  return running_host;
}

void pause(std::chrono::microseconds d) {
  if (auto* host = fiber_host::current()) {
    const auto until = steady::now() + d;
    host->suspend_until([&] { return steady::now() >= until; }, d);
  } else {
    std::this_thread::sleep_for(d);
  }
}

// Sanitizers that keep shadow stacks would need telling of every switch: GCC names them with
// __SANITIZE_*__, clang with __has_feature.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CLEAVE_SANITIZED_STACKS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer) || __has_feature(hwaddress_sanitizer)
#define CLEAVE_SANITIZED_STACKS 1
#endif
#endif

bool fiber_pool::available() noexcept {
#ifdef CLEAVE_SANITIZED_STACKS
  return false;
#else
  return true;
#endif
}

struct fiber_pool::context {
  ucontext_t uc{};
};

// A fiber: its stack (a guard page below it), its context, and the job it runs. It loops: runs a
// job, switches back to its pool, and runs the next job it is given there.
struct fiber_pool::fiber {
  fiber(fiber_pool& p, std::size_t bytes) : pool(p) {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    size = (bytes + page - 1) / page * page + page;
    stack = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (stack == MAP_FAILED) throw std::bad_alloc();
    ::mprotect(stack, page, PROT_NONE);  // an overflow faults rather than corrupting
    ::getcontext(&uc);
    uc.uc_stack.ss_sp = stack;
    uc.uc_stack.ss_size = size;
    uc.uc_link = nullptr;
    ::makecontext(&uc, &fiber::entry, 0);
  }
  ~fiber() { ::munmap(stack, size); }
  fiber(const fiber&) = delete;
  fiber& operator=(const fiber&) = delete;

  static void entry() {
    auto* self = running;
    for (;;) {
      try {
        self->work();
      } catch (const std::exception& e) {
        spdlog::error("a job on a fiber threw: {}", e.what());
      } catch (...) {
        spdlog::error("a job on a fiber threw");
      }
      self->work = nullptr;
      self->ended = true;
      self->yield();
    }
  }

  // Back to the pool's owner; returns when the pool resumes this fiber.
  void yield() { ::swapcontext(&uc, &pool.main_->uc); }

  static thread_local fiber* running;  // the fiber running on this thread
  fiber_pool& pool;
  void* stack = nullptr;
  std::size_t size = 0;
  ucontext_t uc{};
  job work;
  const function_ref<bool()>* ready = nullptr;  // while suspended: when it may go on
  std::chrono::microseconds recheck{0};         // and how often to look, unwoken
  bool ended = false;
};

thread_local fiber_pool::fiber* fiber_pool::fiber::running = nullptr;

fiber_pool::fiber_pool(check_scheduler schedule_check, std::size_t stack_bytes)
    : stack_bytes_(stack_bytes),
      inbox_(std::make_shared<fiber_inbox>()),
      main_(std::make_unique<context>()) {
  inbox_->schedule = std::move(schedule_check);
}

fiber_pool::~fiber_pool() {
  {
    const std::lock_guard lock(inbox_->mutex);
    inbox_->schedule = nullptr;
  }
  // A fiber still suspended is left as it is, its stack kept: what it waits for (a command
  // queued in a group commit lane) may still read it.
  for (auto& f : waiting_) (void)f.release();
}

void fiber_pool::start(job j) {
  std::unique_ptr<fiber> f;
  if (spare_.empty()) {
    f = std::make_unique<fiber>(*this, stack_bytes_);
  } else {
    f = std::move(spare_.back());
    spare_.pop_back();
  }
  f->work = std::move(j);
  const bool ended = resume(*f);
  settle(std::move(f), ended);
}

void fiber_pool::check() {
  {
    const std::lock_guard lock(inbox_->mutex);
    inbox_->pending = false;
    if (inbox_->rechecked && steady::now() >= *inbox_->rechecked) inbox_->rechecked.reset();
  }
  // (Fibers resumed here may suspend again: each is looked at once.)
  auto looked_at = std::exchange(waiting_, {});
  for (auto& f : looked_at) {
    const bool ended = (*f->ready)() && resume(*f);
    settle(std::move(f), ended);
  }
}

void fiber_pool::settle(std::unique_ptr<fiber> f, bool ended) {
  if (ended) {
    spare_.push_back(std::move(f));
    return;
  }
  const auto recheck = f->recheck;
  waiting_.push_back(std::move(f));
  if (recheck.count() == 0) return;
  // One timed check at a time, the earliest wanted.
  const auto due = steady::now() + recheck;
  const std::lock_guard lock(inbox_->mutex);
  if (inbox_->rechecked && *inbox_->rechecked <= due) return;
  inbox_->rechecked = due;
  inbox_->schedule(recheck);
}

void fiber_pool::suspend_until(function_ref<bool()> ready, std::chrono::microseconds recheck) {
  if (ready()) return;
  auto* f = fiber::running;
  f->ready = &ready;
  f->recheck = recheck;
  f->yield();
  f->ready = nullptr;
}

bool fiber_pool::resume(fiber& f) {
  auto* const outer_fiber = fiber::running;
  auto* const outer_host = running_host;
  fiber::running = &f;
  running_host = this;
  ::swapcontext(&main_->uc, &f.uc);
  running_host = outer_host;
  fiber::running = outer_fiber;
  return std::exchange(f.ended, false);
}

}  // namespace cleave::detail
