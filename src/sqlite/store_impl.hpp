#pragma once
// What the SQLite store's parts share: the definition of store::impl (the single writer, lent out
// under its lock, and the read-only readers, each on a connection of its own) and the helpers that
// run a statement and always reset it. Internal to src/sqlite.

#include <cleave/sqlite/store.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "checkpointer.hpp"
#include "connection.hpp"
#include "wal_index.hpp"

namespace cleave::sqlite::detail {

// The log's head: the last position appended (0 for none). One writer at a time, so every event
// up to it has committed in the snapshot that reads it.
inline constexpr std::string_view select_head =
    "select coalesce(max(position), 0) from cleave_events";

// Resets a statement however the scope is left, so a throwing row callback leaves no statement
// half-run.
struct reset_on_exit {
  statement& s;
  ~reset_on_exit() { s.reset(); }
};

inline void run_query(connection& conn, std::string_view sql, std::span<const sql_value> params,
                      row_callback on_row) {
  auto& s = conn.prepare(sql, params);
  reset_on_exit guard{s};
  while (s.step()) on_row(s);
}

inline std::int64_t scalar(connection& conn, std::string_view sql,
                           std::span<const sql_value> params = {}) {
  auto& s = conn.prepare(sql, params);
  reset_on_exit guard{s};
  return s.step() ? s.int_at(0) : 0;
}

}  // namespace cleave::sqlite::detail

namespace cleave::sqlite {

struct store::impl {
  // The single write transaction; the store lends it out under write_mutex (session.cpp).
  struct writer final : write_transaction {
    impl* owner = nullptr;
    // Copied from the request, which need not outlive the transaction.
    std::string command_id, correlation_id;
    std::int64_t last_position = 0;

    void query(std::string_view sql, std::span<const sql_value> params,
               row_callback on_row) override {
      detail::run_query(*owner->write_conn, sql, params, on_row);
    }
    std::int64_t exec(std::string_view sql, std::span<const sql_value> params) override {
      return owner->write_conn->exec(sql, params);
    }
    void script(std::string_view sql) override { owner->write_conn->script(sql); }
    std::uint64_t append(const pending_event& e) override;
    std::optional<remembered_outcome> remembered() override;
    void remember(const remembered_outcome& outcome) override;
    void rebind(const request_meta& meta) override;
    position_token position_so_far() override {
      if (last_position == 0)
        last_position = detail::scalar(*owner->write_conn, detail::select_head);
      return position_token(0, static_cast<std::uint64_t>(last_position));
    }

    position_token commit() override;
    void rollback() noexcept override;
  };

  // A read-only transaction on a connection of its own (or on the writer's, for ":memory:").
  struct reader final : read_transaction {
    impl* owner = nullptr;
    std::unique_ptr<detail::connection> own;
    detail::connection* conn = nullptr;

    void query(std::string_view sql, std::span<const sql_value> params,
               row_callback on_row) override {
      detail::run_query(*conn, sql, params, on_row);
    }
    void finish() noexcept override;
  };

  // Opening the database and lending out its writer and readers (store.cpp).
  explicit impl(const options& o);
  write_transaction& begin_write(const request_meta& meta);
  read_transaction& begin_read();
  void give_back(reader* r) noexcept;

  // Runs `body` in a read transaction that is always finished.
  template <class F>
  auto read(F&& body) {
    auto& tx = static_cast<reader&>(begin_read());
    const read_scope ending(tx);
    return body(*tx.conn);
  }

  options opts;
  bool memory;
  // The wal-index header, for data_version(); null on ":memory:" or when it cannot be mapped.
  std::unique_ptr<detail::wal_index_header> wal_index;
  std::atomic<std::uint64_t> commits{0};  // write transactions committed by this store
  // The single writer's lock. Not a std::mutex: under group commit the shared transaction may
  // end (and give the lock back) on another thread than the one that began it, which a
  // std::mutex forbids. Nor a std::binary_semaphore: the one of GCC 12's libstdc++ can miss a
  // release and sleep for ever (seen: a command's writer hung after a projector's batch).
  class write_lock {
   public:
    void lock() {
      std::unique_lock guard(mutex_);
      free_cv_.wait(guard, [&] { return !held_ && first_ == 0; });
      held_ = true;
    }
    bool try_lock_until(clock::time_point until) {
      std::unique_lock guard(mutex_);
      if (!free_cv_.wait_until(guard, until, [&] { return !held_ && first_ == 0; })) return false;
      held_ = true;
      return true;
    }
    // As try_lock_until, ahead of every lock() and try_lock_until() waiting (the WAL
    // checkpointer, which a writer sending back to back would otherwise never let in).
    bool try_lock_first_until(clock::time_point until) {
      std::unique_lock guard(mutex_);
      ++first_;
      const bool got = first_cv_.wait_until(guard, until, [&] { return !held_; });
      --first_;
      if (got) {
        held_ = true;
      } else if (first_ == 0) {
        free_cv_.notify_all();  // (those it held back)
      }
      return got;
    }
    void unlock() {
      std::lock_guard guard(mutex_);
      held_ = false;
      if (first_ > 0)
        first_cv_.notify_one();
      else
        free_cv_.notify_one();
    }

   private:
    std::mutex mutex_;
    std::condition_variable free_cv_, first_cv_;
    bool held_ = false;
    int first_ = 0;  // waiting ahead of the others
  };
  write_lock write_mutex;
  std::uint64_t outcomes_recorded = 0;  // guarded by write_mutex
  std::unique_ptr<detail::connection> write_conn;
  // Its WAL checkpoints, off its commits (a file database; ended before write_conn).
  std::unique_ptr<detail::checkpointer> checkpoints;
  writer write_tx;
  reader memory_reader;
  std::mutex readers_mutex;
  std::vector<std::unique_ptr<reader>> readers;
  std::vector<reader*> free_readers;
  std::mutex leases_mutex;
  std::set<std::string, std::less<>> memory_leases;
};

}  // namespace cleave::sqlite
