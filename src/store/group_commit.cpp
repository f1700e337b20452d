#include <cleave/store/group_commit.hpp>

#include <deque>
#include <stdexcept>
#include <utility>

#include <cleave/store/detail/forwarding.hpp>

namespace cleave {

// A command sent through write(), queued until the caller holding its lane runs it. Shared by
// its caller and the lane, so that ending it never touches a request its caller has left.
struct group_commit::request {
  enum : int {
    queued,     // waiting to be run
    kept,       // ran and kept its work in the open group; waits for the group to end
    ended,      // done: `failure` or `token` says how
    take_over,  // the last holder of the lane left; this caller is to run the queue
  };

  request(const request_meta& m, function_ref<bool(write_transaction&)> w) : meta(m), work(w) {}

  // Wakes the caller (by the holder of the lane).
  void end() noexcept {
    state.store(ended, std::memory_order_release);
    state.notify_one();
  }

  const request_meta& meta;
  function_ref<bool(write_transaction&)> work;
  std::atomic<int> state{queued};
  std::exception_ptr failure;  // what `work` or its group's commit threw
  position_token token;        // what its commit returns
};

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
  std::size_t turns = 0;            // turns taken in it, kept or not: a group has at most max_group
  std::vector<std::shared_ptr<request>> in_group;  // queued commands among those members

  std::mutex queue_mutex;  // guards `queue`
  std::deque<std::shared_ptr<request>> queue;
  std::atomic<std::size_t> queued{0};  // queue.size(), read without queue_mutex

  explicit lane(group_commit& o);

  void push(std::shared_ptr<request> r) {
    const std::lock_guard guard(queue_mutex);
    queue.push_back(std::move(r));
    ++queued;
  }

  std::shared_ptr<request> pop() {
    const std::lock_guard guard(queue_mutex);
    if (queue.empty()) return nullptr;
    auto r = std::move(queue.front());
    queue.pop_front();
    --queued;
    return r;
  }

  // Begins a member's turn (mutex held): opens a group when none is, and the member's savepoint
  // in it. On failure the open group is abandoned and the exception passes on.
  void begin_turn(const request_meta& meta);
  // Runs one queued command in its own savepoint of the shared transaction (mutex held).
  void run(const std::shared_ptr<request>& r);

  // Runs queued commands (mutex held on entry, released on return), committing each group when it
  // is full or nobody else waits to join it, until the queue is empty or `own` has ended; then
  // wakes the next queued caller, if any, to go on: nobody serves others for ever.
  void serve(const request& own) {
    while (own.state.load(std::memory_order_acquire) != request::ended) {
      auto r = pop();
      if (!r) break;
      run(r);
      end_turn();
    }
    end_turn();
    mutex.unlock();
    hand_over();
  }

  // After a turn or a serve ended (mutex released): wakes the first queued caller, if any, to run
  // the queue. One that finds the lane held waits; its holder looks at the queue after it lets go.
  void hand_over() noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);  // (pairs with the one in write())
    if (queued.load() == 0) return;
    std::shared_ptr<request> next;
    {
      const std::lock_guard guard(queue_mutex);
      if (!queue.empty()) next = queue.front();
    }
    int expected = request::queued;
    if (next && next->state.compare_exchange_strong(expected, request::take_over))
      next->state.notify_one();
  }

  // Ends the running member's turn (mutex held): commits the group when it had its max_group
  // turns (kept or not, so a stream of failing commands cannot keep it open) or nobody waits to
  // join it, else leaves it open for the next member.
  void end_turn() noexcept {
    if (!shared) return;  // the group already ended (its transaction broke)
    // the next member joins
    if (turns < owner.max_group_ && (waiting.load() > 0 || queued.load() > 0)) return;
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
    finish(*end, in_group);
  }

  // Tells the members of an ended group: those that took turns, then the queued ones.
  static void finish(group_end& end, std::vector<std::shared_ptr<request>>& requests) noexcept {
    end.done.store(1, std::memory_order_release);
    end.done.notify_all();
    for (auto& r : requests) {
      if (end.failure)
        r->failure = end.failure;
      else
        r->token = position_token(r->token.transaction(), r->token.position(), end.lsn);
      r->end();
    }
    requests.clear();
  }

  // Ends the open group after its transaction broke: every member that kept work in it fails.
  void abandon(std::exception_ptr why) noexcept {
    if (!shared) return;
    std::exchange(shared, nullptr)->rollback();
    auto end = std::exchange(open, nullptr);
    if (members > 0) {
      end->failure = std::move(why);
      finish(*end, in_group);
    }
    members = 0;
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
      mine = keep();
    } catch (...) {
      end();
      turn.unlock();
      lane_.hand_over();  // (commands queued meanwhile need a caller)
      throw;
    }
    lane_.end_turn();
    turn.unlock();
    lane_.hand_over();
    const auto lsn = lane::wait_for(*group);
    return position_token(mine.transaction(), mine.position(), lsn);
  }

  void rollback() noexcept override {
    std::unique_lock turn(lane_.mutex, std::adopt_lock);
    end();
    turn.unlock();
    lane_.hand_over();
  }

  // Runs a queued command's work as this member's turn (mutex held; the turn begun): keeps its
  // work in the group, or rolls it back to its savepoint and ends the request.
  void run(const std::shared_ptr<request>& r) noexcept {
    try {
      if (r->work(*this)) {
        r->token = keep();
        lane_.in_group.push_back(r);
        r->state.store(request::kept, std::memory_order_relaxed);
        return;
      }
    } catch (...) {
      r->failure = std::current_exception();
    }
    drop();
    r->end();
  }

 private:
  // Keeps this member's work in the group; returns its token without the commit LSN.
  position_token keep() {
    if (doomed_) std::rethrow_exception(doomed_);
    position_token mine;
    // Queued where the backend queues statements: the release travels with the member's
    // appends, in the round trip that learns their positions.
    dooming([&] {
      lane_.shared->defer("release savepoint cleave_member", {});
      mine = lane_.shared->position_so_far();  // (a backend holding appends sends them now)
    });
    ++lane_.members;
    return mine;
  }

  // Ends this member's turn without keeping its work (mutex held).
  void end() noexcept {
    drop();
    lane_.end_turn();
  }

  // Leaves this member's work out: back to its savepoint, or, when the shared transaction is
  // doomed, the whole group fails.
  void drop() noexcept {
    if (auto why = std::exchange(doomed_, nullptr))
      lane_.abandon(std::move(why));
    else
      undo();
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

group_commit::lane::lane(group_commit& o) : owner(o), running(std::make_unique<member>(*this)) {
  in_group.reserve(owner.max_group_);  // (keeping a member then allocates nothing)
}

void group_commit::lane::begin_turn(const request_meta& meta) {
  try {
    if (!shared) {
      shared = &owner.inner_.begin_write(meta, isolation::serializable);
      open = std::make_shared<group_end>();
      members = 0;
      turns = 0;
    }
    ++turns;
    shared->rebind(meta);
    shared->defer("savepoint cleave_member", {});  // (sent with the member's first statement)
    running->join();
  } catch (...) {
    abandon(std::current_exception());
    throw;
  }
}

void group_commit::lane::run(const std::shared_ptr<request>& r) {
  try {
    begin_turn(r->meta);
  } catch (...) {
    r->failure = std::current_exception();
    r->end();
    return;
  }
  running->run(r);
}

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
    l.begin_turn(meta);
  } catch (...) {
    l.mutex.unlock();
    l.hand_over();
    throw;
  }
  return *l.running;
}

position_token group_commit::write(const request_meta& meta, isolation,
                                   function_ref<bool(write_transaction&)> work) {
  auto& l = *lanes_[next_lane_.fetch_add(1, std::memory_order_relaxed) % lanes_.size()];
  auto r = std::make_shared<request>(meta, work);
  l.push(r);
  // Either this caller finds the lane free below, or its holder, letting go after this fence,
  // sees the queue not empty and wakes the first queued caller.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (;;) {
    int state = r->state.load(std::memory_order_acquire);
    if (state == request::ended) break;
    if (state == request::take_over) {
      r->state.compare_exchange_strong(state, request::queued);
      continue;
    }
    // Queued: run the queue when the lane is free; else its holder runs it, or wakes us to.
    if (state == request::queued && l.mutex.try_lock()) {
      l.serve(*r);
      continue;
    }
    r->state.wait(state, std::memory_order_acquire);
  }
  // (Taken out: the request may be freed on the thread that last woke it, and the exception must
  // end on this one.)
  if (auto failure = std::exchange(r->failure, nullptr)) std::rethrow_exception(failure);
  return r->token;
}

read_transaction& group_commit::begin_read(const request_meta& meta, const consistency& wanted) {
  return inner_.begin_read(meta, wanted);
}

}  // namespace cleave
