// Wake-ups across processes by NOTIFY: the thread that sends one after any number of commits (or
// of a projector's batches), and the watches that LISTEN for them.

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <system_error>
#include <thread>
#include <utility>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <fmt/format.h>

#include "store_impl.hpp"

namespace cleave::postgres {

namespace {

using detail::connection;

constexpr std::string_view commit_channel = "cleave_commits";
// Apart from commits, so that a projector's own batches do not wake projectors.
constexpr std::string_view progress_channel = "cleave_progress";

// LISTENs to `channel` on a connection of its own; woken by the NOTIFY each process sends after
// its commits or batches (coalesced), or by interrupt() through an eventfd. A lost connection is
// made again with backoff; until then (and right after, as notifications may have been missed)
// wait_until returns early and often, so that the caller's poll of the log covers the gap.
class notify_watch final : public commit_watch {
 public:
  notify_watch(std::string url, std::string_view channel)
      : url_(std::move(url)),
        listen_(fmt::format("listen {}", channel)),
        interrupt_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    connect();
    if (!conn_) throw error_exception({errc::unavailable, "cannot LISTEN for commits", {}});
    reconnected_ = false;
  }
  ~notify_watch() override { ::close(interrupt_fd_); }

  void wait_until(clock::time_point deadline) override {
    if (!conn_) {
      if (clock::now() >= retry_at_) connect();
      // Down, or up again after a gap: "maybe", after a short wait.
      if (!conn_ || std::exchange(reconnected_, false)) {
        wait_for_interrupt(std::min(deadline, clock::now() + down_poll));
        return;
      }
    }
    PGconn* pg = conn_->handle();
    for (;;) {
      if (drain()) return;
      const auto left =
          std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now()).count();
      if (left <= 0) return;
      pollfd fds[] = {{PQsocket(pg), POLLIN, 0}, {interrupt_fd_, POLLIN, 0}};
      const int timeout = static_cast<int>(std::min<long long>(left, 60'000));
      if (::poll(fds, 2, timeout) < 0 && errno != EINTR) return;
      if (fds[1].revents & POLLIN) {
        std::uint64_t n;
        (void)!::read(interrupt_fd_, &n, sizeof n);
        return;
      }
      if ((fds[0].revents & (POLLERR | POLLHUP)) ||
          ((fds[0].revents & POLLIN) && PQconsumeInput(pg) == 0) ||
          PQstatus(pg) == CONNECTION_BAD) {
        conn_.reset();  // made again by the next wait
        return;
      }
    }
  }
  void interrupt() override {
    const std::uint64_t one = 1;
    (void)!::write(interrupt_fd_, &one, sizeof one);
  }

 private:
  // How often the caller polls while the connection is down.
  static constexpr std::chrono::milliseconds down_poll{50};

  void connect() {
    try {
      auto fresh = std::make_unique<connection>(url_);
      fresh->script(listen_);
      conn_ = std::move(fresh);
      reconnected_ = true;
      backoff_ = std::chrono::milliseconds(50);
    } catch (const error_exception&) {
      retry_at_ = clock::now() + backoff_;
      backoff_ = std::min(backoff_ * 2, std::chrono::milliseconds(2000));
    }
  }

  void wait_for_interrupt(clock::time_point until) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - clock::now()).count();
    if (left <= 0) return;
    pollfd fd{interrupt_fd_, POLLIN, 0};
    if (::poll(&fd, 1, static_cast<int>(left)) > 0) {
      std::uint64_t n;
      (void)!::read(interrupt_fd_, &n, sizeof n);
    }
  }

  // True when a notification had arrived.
  bool drain() {
    bool any = false;
    while (PGnotify* n = PQnotifies(conn_->handle())) {
      any = true;
      PQfreemem(n);
    }
    return any;
  }

  std::string url_, listen_;
  std::unique_ptr<connection> conn_;
  bool reconnected_ = false;
  clock::time_point retry_at_{};
  std::chrono::milliseconds backoff_{50};
  int interrupt_fd_;
};

}  // namespace

void store::impl::announce_commit() {
  announce(notify_pending);
}

void store::impl::announce_progress() {
  announce(progress_pending);
}

void store::impl::announce(bool& pending) {
  {
    std::lock_guard lock(notify_mutex);
    if (!notifier.joinable()) notifier = std::thread([this] { send_notifications(); });
    pending = true;
  }
  notify_wake.notify_one();
}

void store::impl::send_notifications() {
  std::unique_ptr<connection> conn;
  std::unique_lock lock(notify_mutex);
  for (;;) {
    notify_wake.wait(lock, [&] { return notify_pending || progress_pending || notify_stopping; });
    if (notify_stopping) return;
    std::string sql;
    if (std::exchange(notify_pending, false)) sql = fmt::format("notify {};", commit_channel);
    if (std::exchange(progress_pending, false)) sql += fmt::format("notify {};", progress_channel);
    lock.unlock();
    try {
      if (!conn || !conn->healthy()) {
        conn = std::make_unique<connection>(opts.url);
        // A wake-up needs no durability: its commit need not wait for a WAL flush (while
        // holding the server's notification lock).
        conn->script("set synchronous_commit = off");
      }
      conn->script(sql);
    } catch (const error_exception&) {
      conn.reset();  // listeners fall back on their poll
    }
    lock.lock();
  }
}

std::unique_ptr<commit_watch> store::watch_commits() {
  return std::make_unique<notify_watch>(options_.url, commit_channel);
}

void store::announce_progress() noexcept {
  try {
    impl_->announce_progress();
  } catch (const std::system_error&) {
    // No thread to send it: listeners fall back on their poll.
  }
}

std::unique_ptr<commit_watch> store::watch_progress() {
  return std::make_unique<notify_watch>(options_.url, progress_channel);
}

}  // namespace cleave::postgres
