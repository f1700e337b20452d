#include <cleave/store/group_commit.hpp>

#include <stdexcept>
#include <utility>

#include <cleave/store/detail/forwarding.hpp>

namespace cleave {

// One lane: a shared transaction and the members taking turns in it.
struct group_commit::lane {
  // How a group ended, for its members: each waits on `done` alone, not on the lane's mutex, so
  // the members of an ended group wake without queueing behind the next group's turns.
  struct group_end {
    std::atomic<int> done{0};    // 1 once the fields below are set
    std::exception_ptr failure;  // set when the group failed
    std::uint64_t lsn = 0;
  };

  group_commit& owner;
  std::unique_ptr<member> running;      // the one member whose turn it is
  std::atomic<std::size_t> waiting{0};  // threads queued for a turn
  std::mutex mutex;                     // held by the running member; guards what follows
  write_transaction* shared = nullptr;
  std::shared_ptr<group_end> open;  // the open group's end, while `shared` is set
  std::size_t members = 0;          // members of the open group that kept their work

  explicit lane(group_commit& o);

  // Ends the running member's turn (mutex held): commits the group when it is full or nobody
  // waits to join it, else leaves it open for the next member.
  void end_turn() {
    if (!shared) return;  // the group already ended (its transaction broke)
    if (members < owner.max_group_ && waiting.load() > 0) return;  // the next member joins
    auto* tx = std::exchange(shared, nullptr);
    auto end = std::exchange(open, nullptr);
    if (members == 0) {
      tx->rollback();
      return;
    }
    try {
      end->lsn = tx->commit().lsn();
      ++owner.groups_committed_;
      owner.commands_committed_ += members;
    } catch (...) {
      end->failure = std::current_exception();  // commit() already ended the transaction
    }
    members = 0;
    finish(*end);
  }

  // Ends the open group after its transaction broke: every member that kept work in it fails.
  void abandon(std::exception_ptr why) noexcept {
    if (!shared) return;
    std::exchange(shared, nullptr)->rollback();
    auto end = std::exchange(open, nullptr);
    if (members > 0) {
      end->failure = std::move(why);
      finish(*end);
    }
    members = 0;
  }

  // Tells the members of an ended group.
  static void finish(group_end& end) noexcept {
    end.done.store(1, std::memory_order_release);
    end.done.notify_all();
  }

  // Waits until the group of `end` has ended; returns its commit LSN or throws its failure.
  static std::uint64_t wait_for(const group_end& end) {
    end.done.wait(0, std::memory_order_acquire);
    if (end.failure) std::rethrow_exception(end.failure);
    return end.lsn;
  }
};

// The running member: forwards to the shared transaction, inside its own savepoint.
class group_commit::member final : public detail::forwarding_transaction {
 public:
  explicit member(lane& l) : lane_(l) {}

  // Begins this member's turn in the lane's shared transaction.
  void join() noexcept { inner_ = lane_.shared; }

 private:
  // Runs a call into the shared transaction, noting a transient failure: PostgreSQL fails every
  // later statement of a transaction it gave up to keep others serializable, so the whole group
  // must end, and its members run again (the bus retries them).
  template <class F>
  auto dooming(F&& call) {
    try {
      return call();
    } catch (const transient_error&) {
      doomed_ = std::current_exception();
      throw;
    }
  }

 public:
  void query(std::string_view sql, std::span<const sql_value> params,
             row_callback on_row) override {
    dooming([&] { inner_->query(sql, params, on_row); });
  }
  std::int64_t exec(std::string_view sql, std::span<const sql_value> params) override {
    return dooming([&] { return inner_->exec(sql, params); });
  }
  deferred defer(std::string_view sql, std::span<const sql_value> params) override {
    return dooming([&] { return inner_->defer(sql, params); });
  }
  std::int64_t deferred_rows(std::uint64_t ticket) override {
    return dooming([&] { return inner_->deferred_rows(ticket); });
  }
  std::uint64_t append(const pending_event& e) override {
    return dooming([&] { return inner_->append(e); });
  }
  void remember(const remembered_outcome& o) override {
    dooming([&] { inner_->remember(o); });
  }

  position_token commit() override {
    std::unique_lock turn(lane_.mutex, std::adopt_lock);  // taken in begin_write
    const auto group = lane_.open;                        // (kept alive past the lane's next group)
    position_token mine;
    try {
      if (doomed_) std::rethrow_exception(doomed_);
      // Queued where the backend queues statements: the release travels with the member's
      // appends, in the round trip that learns their positions.
      dooming([&] {
        lane_.shared->defer("release savepoint cleave_member", {});
        mine = lane_.shared->position_so_far();  // (a backend holding appends sends them now)
      });
      ++lane_.members;
    } catch (...) {
      end();
      throw;
    }
    lane_.end_turn();
    turn.unlock();
    const auto lsn = lane::wait_for(*group);
    return position_token(mine.transaction(), mine.position(), lsn);
  }

  void rollback() noexcept override {
    std::unique_lock turn(lane_.mutex, std::adopt_lock);
    end();
  }

 private:
  // Ends this member's turn without keeping its work: back to its savepoint, or, when the shared
  // transaction is doomed, the whole group.
  void end() noexcept {
    if (auto why = std::exchange(doomed_, nullptr))
      lane_.abandon(std::move(why));
    else
      undo();
    lane_.end_turn();
  }

  // Rolls this member's work back to its savepoint; if even that fails, the shared transaction
  // cannot go on and the group fails with it.
  void undo() noexcept {
    try {
      lane_.shared->exec("rollback to savepoint cleave_member", {});
      lane_.shared->exec("release savepoint cleave_member", {});
    } catch (...) {
      lane_.abandon(std::current_exception());
    }
  }

  lane& lane_;
  std::exception_ptr doomed_;  // the transient failure that doomed the shared transaction
};

group_commit::lane::lane(group_commit& o) : owner(o), running(std::make_unique<member>(*this)) {}

group_commit::group_commit(session_source& inner, std::size_t max_group, std::size_t lanes)
    : inner_(inner), max_group_(max_group == 0 ? 1 : max_group) {
  for (std::size_t i = 0; i < (lanes == 0 ? 1 : lanes); ++i)
    lanes_.push_back(std::make_unique<lane>(*this));
}

group_commit::~group_commit() = default;

write_transaction& group_commit::begin_write(const request_meta& meta, isolation) {
  auto& l = *lanes_[next_lane_.fetch_add(1, std::memory_order_relaxed) % lanes_.size()];
  ++l.waiting;
  l.mutex.lock();
  --l.waiting;
  try {
    if (!l.shared) {
      l.shared = &inner_.begin_write(meta, isolation::serializable);
      l.open = std::make_shared<lane::group_end>();
      l.members = 0;
    }
    l.shared->rebind(meta);
    l.shared->defer("savepoint cleave_member", {});  // (sent with the member's first statement)
    l.running->join();
  } catch (...) {
    l.abandon(std::current_exception());
    l.mutex.unlock();
    throw;
  }
  return *l.running;
}

read_transaction& group_commit::begin_read(const request_meta& meta, const consistency& wanted) {
  return inner_.begin_read(meta, wanted);
}

}  // namespace cleave
