#pragma once
// Group commit: an opt-in session source in which up to `max_group` in-flight commands share one
// database transaction — one commit, one flush to disk — while each stays atomic to its caller:
// each runs in a savepoint of its own, a failing one is rolled back to it alone, and a command's
// commit() returns only once the shared transaction is durable.
//
//   cleave::sqlite::store db({.path = "var/app.db"});
//   cleave::group_commit grouped(db);
//   cleave::command_bus commands{&grouped};   // many threads sending at once share commits
//
// Within a lane, commands run one at a time (they share a connection). SQLite has one writer, so
// one lane; on PostgreSQL several lanes (each its own connection and group) can run side by side,
// but each splits the senders into smaller groups: a member that only writes costs its lane no
// round trip, so one lane is the fastest on few cores (measured on two: 2.2x a transaction per
// command with one lane, 1.7x with four). More lanes pay when handlers read (each read waits for
// the server while the lane waits) or when the server has cores to spare.
// The command bus sends through write() (queued commands run on whichever caller holds the lane);
// begin_write() gives a turn in the lane's transaction to code that drives one itself. A command
// written from a fiber (detail::fiber_host: the HTTP server's commands) holds no thread: the fiber
// is suspended, and a runner thread of the lane (started by the first such command) serves them.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <vector>

#include <cleave/store/store.hpp>

namespace cleave {

class group_commit final : public session_source {
 public:
  // `inner` is not owned and must outlive this.
  // Stacks on any session source: a store, or a projector's source (inline projections then
  // change in the shared transaction, each in its command's savepoint).
  explicit group_commit(session_source& inner, std::size_t max_group = 32, std::size_t lanes = 1);
  ~group_commit() override;

  using session_source::begin_write;
  // Every group runs serializable (the strongest level a member may ask for), whatever `level`.
  write_transaction& begin_write(const request_meta& meta, isolation level) override;
  // Flat combining: the command joins its lane's queue, and whichever caller holds the lane runs
  // the queued commands one after another, each in its savepoint, and commits the group — so a
  // group costs no thread hand-off per member. Every group runs serializable, whatever `level`.
  // The caller waits until its group is durable (or `work` is rolled back); on a fiber it waits
  // suspended, and the lane's runner thread runs the queue.
  position_token write(const request_meta& meta, isolation level,
                       function_ref<bool(write_transaction&)> work) override;
  using session_source::begin_read;
  read_transaction& begin_read(const request_meta& meta, const consistency& wanted) override;

  // How many commands can be in a group at once, over all lanes: callers that hold a thread per
  // command (an HTTP server's workers) need as many for the groups to fill.
  std::size_t capacity() const noexcept { return max_group_ * lanes_.size(); }
  // Groups committed so far, and the commands they held (for metrics and tests).
  std::uint64_t groups_committed() const noexcept { return groups_committed_.load(); }
  std::uint64_t commands_committed() const noexcept { return commands_committed_.load(); }

 private:
  class member;
  struct request;
  struct lane;

  session_source& inner_;
  std::size_t max_group_;
  std::vector<std::unique_ptr<lane>> lanes_;
  std::atomic<std::size_t> next_lane_{0};
  std::atomic<std::uint64_t> groups_committed_{0}, commands_committed_{0};
};

}  // namespace cleave
