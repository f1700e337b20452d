#pragma once
// Keeps SQLite's WAL checkpoint off the commit path. SQLite's own checkpoint runs inside the
// commit that crosses its threshold, and syncs the database file there: a commit that waits
// milliseconds for the disk now and then. Here the writer's automatic checkpoint is off (its WAL
// hook only notes the WAL's growth), and a thread of its own, on a connection of its own, copies
// the WAL back into the database once `after_pages` were written to it — at a quiet moment (no
// commit for a millisecond), or after `patience` at the latest — while writers go on. The WAL
// starts over only when a writer begins with every frame copied, so the frames written
// meanwhile are then copied with the writer held (its lock taken next in turn, ahead of the
// writers waiting, for that short copy). Past
// `limit_pages` it does not wait for a quiet moment. Internal to src/sqlite.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <sqlite3.h>

#include "connection.hpp"

namespace cleave::sqlite::detail {

class checkpointer {
 public:
  struct limits {
    int after_pages = 1000;   // SQLite's own threshold
    int limit_pages = 16000;  // ~64 MB of 4 KB pages
    std::chrono::milliseconds patience{10};
  };
  // Holds the store's writer until a deadline (false: not free by then), and lets it go.
  struct writer_lock {
    std::function<bool(std::chrono::steady_clock::time_point)> hold;
    std::function<void()> release;
  };
  // Takes over the checkpoints of `writer` (a connection on the database at `path`).
  checkpointer(const std::string& path, sqlite3* writer, writer_lock lock, limits l);
  ~checkpointer();
  checkpointer(const checkpointer&) = delete;
  checkpointer& operator=(const checkpointer&) = delete;

 private:
  static int on_commit(void* self, sqlite3* db, const char* schema, int pages);
  void run();
  // Copies what it can of the WAL into the database; returns the frames left (0: all of them),
  // or -1 when it could not run (busy: another checkpoint; a failure, logged).
  int checkpoint(int mode);

  limits limits_;
  sqlite3* writer_;
  writer_lock writer_lock_;
  std::unique_ptr<connection> own_;
  std::atomic<int> wal_pages_{0};  // the WAL's length after the last commit
  std::atomic<int> grown_{0};      // pages written to the WAL since the last checkpoint
  std::atomic<std::int64_t> last_commit_ns_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace cleave::sqlite::detail
