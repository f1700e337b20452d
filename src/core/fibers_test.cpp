// Fibers: a job waits suspended while its thread goes on with others, another thread's wake
// resumes it, a pause needs no wake, and a fiber inside a catch block is never switched away.

#include <cleave/core/detail/fibers.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace {

using namespace std::chrono_literals;
using cleave::detail::fiber_host;
using cleave::detail::fiber_pool;

// A one-thread event loop, as an I/O thread would run one: the pool's checks are posted to it.
struct loop {
  std::mutex mutex;
  std::deque<std::pair<std::chrono::steady_clock::time_point, std::function<void()>>> posted;
  fiber_pool pool{[this](std::chrono::microseconds delay) {
    const std::lock_guard lock(mutex);
    posted.emplace_back(std::chrono::steady_clock::now() + delay, [this] { pool.check(); });
  }};

  // Runs what is due until `done()` (or 5 s pass); returns whether `done()` came.
  bool run_until(const std::function<bool()>& done) {
    const auto give_up = std::chrono::steady_clock::now() + 5s;
    while (!done()) {
      if (std::chrono::steady_clock::now() > give_up) return false;
      std::function<void()> next;
      {
        const std::lock_guard lock(mutex);
        for (auto it = posted.begin(); it != posted.end(); ++it) {
          if (it->first > std::chrono::steady_clock::now()) continue;
          next = std::move(it->second);
          posted.erase(it);
          break;
        }
      }
      if (next)
        next();
      else
        std::this_thread::sleep_for(50us);
    }
    return true;
  }
};

TEST(fibers, a_waiting_job_leaves_its_thread_to_others_and_another_threads_wake_resumes_it) {
  if (!fiber_pool::available()) GTEST_SKIP() << "fibers do not run under this sanitizer";
  loop l;
  std::atomic<int> signal{0};
  std::vector<std::string> order;
  l.pool.start([&] {
    order.push_back("first waits");
    auto* host = fiber_host::current();
    ASSERT_NE(host, nullptr);
    auto waker = host->waker();
    std::thread([&signal, waker] {
      std::this_thread::sleep_for(20ms);
      signal = 1;
      cleave::detail::wake(waker);
    }).detach();
    host->suspend_until([&] { return signal.load() == 1; });
    order.push_back("first goes on");
  });
  EXPECT_EQ(l.pool.suspended(), 1u);
  l.pool.start([&] { order.push_back("second runs meanwhile"); });
  EXPECT_EQ(order, (std::vector<std::string>{"first waits", "second runs meanwhile"}));
  ASSERT_TRUE(l.run_until([&] { return order.size() == 3; }));
  EXPECT_EQ(order.back(), "first goes on");
  EXPECT_EQ(l.pool.suspended(), 0u);
}

TEST(fibers, a_pause_resumes_without_a_wake_and_the_thread_is_free_meanwhile) {
  if (!fiber_pool::available()) GTEST_SKIP() << "fibers do not run under this sanitizer";
  loop l;
  bool paused_done = false;
  const auto began = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration waited{};
  l.pool.start([&] {
    cleave::detail::pause(30ms);
    waited = std::chrono::steady_clock::now() - began;
    paused_done = true;
  });
  EXPECT_FALSE(paused_done);  // (suspended: start() returned)
  ASSERT_TRUE(l.run_until([&] { return paused_done; }));
  EXPECT_GE(waited, 30ms);
}

TEST(fibers, code_outside_a_fiber_or_inside_a_catch_block_is_never_suspended) {
  if (!fiber_pool::available()) GTEST_SKIP() << "fibers do not run under this sanitizer";
  EXPECT_EQ(fiber_host::current(), nullptr);
  EXPECT_EQ(fiber_host::running(), nullptr);
  loop l;
  bool in_catch_current = true, in_catch_running = false, after_catch = false;
  l.pool.start([&] {
    try {
      throw std::runtime_error("x");
    } catch (...) {
      in_catch_current = fiber_host::current() != nullptr;
      in_catch_running = fiber_host::running() != nullptr;
    }
    after_catch = fiber_host::current() != nullptr;
  });
  EXPECT_FALSE(in_catch_current);
  EXPECT_TRUE(in_catch_running);
  EXPECT_TRUE(after_catch);
}

TEST(fibers, a_pause_inside_a_catch_block_sleeps_the_thread_and_keeps_its_exception) {
  if (!fiber_pool::available()) GTEST_SKIP() << "fibers do not run under this sanitizer";
  loop l;
  std::string first, second;
  l.pool.start([&] {
    try {
      throw std::runtime_error("first");
    } catch (const std::runtime_error&) {
      cleave::detail::pause(5ms);  // (a switch here would hand this exception to the next fiber)
      try {
        throw;
      } catch (const std::runtime_error& again) {
        first = again.what();
      }
    }
  });
  EXPECT_EQ(first, "first");  // ended within start(): it never suspended
  l.pool.start([&] {
    try {
      throw std::runtime_error("second");
    } catch (const std::runtime_error& e) {
      second = e.what();
    }
  });
  EXPECT_EQ(second, "second");
  EXPECT_EQ(l.pool.suspended(), 0u);
}

TEST(fibers, many_jobs_reuse_few_stacks_and_a_wake_after_the_pool_is_gone_is_dropped) {
  if (!fiber_pool::available()) GTEST_SKIP() << "fibers do not run under this sanitizer";
  cleave::detail::fiber_waker waker;
  {
    loop l;
    int ran = 0;
    for (int i = 0; i < 10'000; ++i) l.pool.start([&] { ++ran; });
    EXPECT_EQ(ran, 10'000);
    waker = l.pool.waker();
  }
  cleave::detail::wake(waker);  // (nothing to wake: no crash, nothing posted)
}

}  // namespace
