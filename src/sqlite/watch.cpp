// Noticing commits, of this process or of any other: a watch that polls PRAGMA data_version.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <utility>

#include "store_impl.hpp"

namespace cleave::sqlite {

namespace {

using detail::connection;
using detail::scalar;

// Notices commits by polling: `PRAGMA data_version` on a connection of its own changes whenever
// any other connection, in any process, commits (a read of shared memory, no I/O); an in-memory
// database has only this process's commit counter.
class data_version_watch final : public commit_watch {
 public:
  data_version_watch(std::unique_ptr<connection> conn, const std::atomic<std::uint64_t>& commits)
      : conn_(std::move(conn)), commits_(commits), seen_(current()) {}

  void wait_until(clock::time_point deadline) override {
    std::unique_lock lock(mutex_);
    for (;;) {
      if (std::exchange(interrupted_, false)) return;
      if (const auto now = current(); now != seen_) {
        seen_ = now;
        return;
      }
      const auto t = clock::now();
      if (t >= deadline) return;
      wake_.wait_until(lock, std::min(deadline, t + poll_interval));
    }
  }
  void interrupt() override {
    {
      std::lock_guard lock(mutex_);
      interrupted_ = true;
    }
    wake_.notify_all();
  }

 private:
  static constexpr auto poll_interval = std::chrono::milliseconds(1);
  std::uint64_t current() {
    if (!conn_) return commits_.load(std::memory_order_acquire);
    return static_cast<std::uint64_t>(scalar(*conn_, "pragma data_version"));
  }

  std::unique_ptr<connection> conn_;
  const std::atomic<std::uint64_t>& commits_;
  std::uint64_t seen_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool interrupted_ = false;
};

}  // namespace

std::unique_ptr<commit_watch> store::watch_commits() {
  std::unique_ptr<connection> conn;
  if (!impl_->memory)
    conn = std::make_unique<connection>(options_.path, SQLITE_OPEN_READONLY, options_.busy_timeout);
  return std::make_unique<data_version_watch>(std::move(conn), impl_->commits);
}

}  // namespace cleave::sqlite
