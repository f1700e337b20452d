#include "checkpointer.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

namespace cleave::sqlite::detail {

namespace {
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

checkpointer::checkpointer(const std::string& path, sqlite3* writer, writer_lock lock, limits l)
    : limits_(l),
      writer_(writer),
      writer_lock_(std::move(lock)),
      // (Waits for readers only in a RESTART past the limit, holding the writer: briefly.)
      own_(std::make_unique<connection>(path, SQLITE_OPEN_READWRITE,
                                        std::chrono::milliseconds(100))) {
  // (A connection learns that the database is in WAL mode when it first reads it.)
  own_->script("select count(*) from sqlite_master");
  thread_ = std::thread([this] { run(); });
  sqlite3_wal_hook(writer_, &checkpointer::on_commit, this);  // (replaces the automatic one)
}

checkpointer::~checkpointer() {
  sqlite3_wal_hook(writer_, nullptr, nullptr);
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

int checkpointer::on_commit(void* self, sqlite3*, const char*, int pages) {
  auto& c = *static_cast<checkpointer*>(self);
  c.last_commit_ns_.store(now_ns(), std::memory_order_relaxed);
  // (Commits run one at a time: the single writer.) A WAL shorter than before started over.
  const int before = c.wal_pages_.exchange(pages, std::memory_order_relaxed);
  const int added = pages >= before ? pages - before : pages;
  const int grown = c.grown_.fetch_add(added, std::memory_order_relaxed) + added;
  if (grown >= c.limits_.after_pages && grown - added < c.limits_.after_pages) {
    std::lock_guard lock(c.mutex_);  // (a wake-up between the thread's check and its wait is kept)
    c.wake_.notify_one();
  }
  return SQLITE_OK;
}

int checkpointer::checkpoint(int mode) {
  int log = 0, done = 0;
  const int rc = sqlite3_wal_checkpoint_v2(own_->handle(), nullptr, mode, &log, &done);
  if (rc != SQLITE_OK && rc != SQLITE_BUSY)
    spdlog::warn("sqlite: a WAL checkpoint failed: {}", sqlite3_errmsg(own_->handle()));
  if (rc != SQLITE_OK || log < 0) return -1;
  return log - done;
}

void checkpointer::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] {
      return stopping_ || grown_.load(std::memory_order_relaxed) >= limits_.after_pages;
    });
    if (stopping_) return;
    lock.unlock();
    // A quiet moment: no commit for a millisecond — unless the WAL is past its limit, or
    // commits never pause for that long.
    const auto give_up = std::chrono::steady_clock::now() + limits_.patience;
    const bool over_limit = wal_pages_.load(std::memory_order_relaxed) >= limits_.limit_pages;
    while (!over_limit && now_ns() - last_commit_ns_.load(std::memory_order_relaxed) < 1'000'000 &&
           std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    grown_.store(0, std::memory_order_relaxed);
    // The bulk beside the writers; then, when (nearly) all of it was copied, the rest with
    // the writer held (next in turn), for the next one to start the WAL over — past the limit
    // waiting for readers too (RESTART). Not when a writer holds it long (a group), unless past
    // the limit. (A writer in another process can still keep the WAL from starting over.)
    bool copied_all = false;
    const int left = checkpoint(SQLITE_CHECKPOINT_PASSIVE);
    if (left >= 0 && left <= limits_.after_pages) {  // (a reader may have held a few back)
      const auto wait = over_limit ? std::chrono::milliseconds(1000) : limits_.patience;
      if (writer_lock_.hold(std::chrono::steady_clock::now() + wait)) {
        copied_all =
            checkpoint(over_limit ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_PASSIVE) == 0;
        writer_lock_.release();
      }
    }
    lock.lock();
    if (!copied_all) {
      // A reader, a long group or another checkpointer stood in the way: again in a moment.
      wake_.wait_for(lock, limits_.patience, [&] { return stopping_; });
      grown_.fetch_add(limits_.after_pages, std::memory_order_relaxed);
    }
  }
}

}  // namespace cleave::sqlite::detail
