#pragma once
// Group commit: an opt-in session source in which up to `max_group` in-flight commands share one
// database transaction — one commit, one fsync — while each stays atomic to its caller: each runs
// in a savepoint of its own, a failing one is rolled back to it alone, and a command's commit()
// returns only once the shared transaction is durable.
//
//   cleave::sqlite::store db({.path = "var/app.db"});
//   cleave::group_commit grouped(db);
//   cleave::command_bus commands{&grouped};   // many threads sending at once share commits
//
// Commands run one at a time inside a group (they share a connection); the gain is on
// durability-bound stores, where many small commits wait on the disk.

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <unordered_map>

#include <cleave/store/store.hpp>

namespace cleave {

class group_commit final : public session_source {
 public:
  // `inner` is not owned and must outlive this.
  explicit group_commit(store& inner, std::size_t max_group = 32);
  ~group_commit() override;

  write_transaction& begin_write(const request_meta& meta) override;
  read_transaction& begin_read(const request_meta& meta) override;

  // Groups committed so far, and commands they held (for metrics and tests).
  std::uint64_t groups_committed() const;
  std::uint64_t commands_committed() const;

 private:
  class member;

  struct ended {
    std::exception_ptr failure;  // set when the shared commit failed
    std::uint64_t lsn = 0;
    std::size_t unread = 0;  // members that have not collected this yet
  };

  // Ends the running member's turn (`turn` holds mutex_): commits the group when it is full or
  // nobody waits to join it, else leaves it open for the next member.
  void end_turn();
  // Waits, releasing the turn, until `group` has ended; returns its commit LSN or throws its
  // failure.
  std::uint64_t wait_for(std::uint64_t group, std::unique_lock<std::mutex>& turn);

  store& inner_;
  std::size_t max_group_;
  std::unique_ptr<member> member_;       // the one running member (one runs at a time)
  std::atomic<std::size_t> waiting_{0};  // threads queued in begin_write
  mutable std::mutex mutex_;             // held by the running member; guards what follows
  std::condition_variable ended_cv_;
  write_transaction* shared_ = nullptr;
  std::uint64_t group_ = 0;  // the open group's number
  std::size_t members_ = 0;  // members of the open group that kept their work
  std::unordered_map<std::uint64_t, ended> ended_;
  std::uint64_t groups_committed_ = 0, commands_committed_ = 0;
};

}  // namespace cleave
