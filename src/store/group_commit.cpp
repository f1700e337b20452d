#include <cleave/store/group_commit.hpp>

#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>

#include <cleave/core/detail/fibers.hpp>
#include <cleave/store/detail/forwarding.hpp>

namespace cleave {

namespace {
// A group's failure as each member's own exception object: an object shared by threads that
// catch it at once is read by one while another's catch block ends, and ThreadSanitizer (which
// does not see libstdc++'s reference count) calls that a race. Copies cleave's errors; anything
// else is shared as it is.
std::exception_ptr own_copy(const std::exception_ptr& shared) noexcept {
  try {
    std::rethrow_exception(shared);
  } catch (const transient_error& e) {
    return std::make_exception_ptr(transient_error(e.error()));
  } catch (const error_exception& e) {
    return std::make_exception_ptr(error_exception(e.error()));
  } catch (...) {
    return shared;
  }
}
}  // namespace

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
    wake();
  }

  // Wakes the caller after its state changed: its thread, or its fiber's host.
  void wake() noexcept {
    if (waker)
      detail::wake(waker);
    else
      state.notify_one();
  }

  const request_meta& meta;
  function_ref<bool(write_transaction&)> work;
  std::atomic<int> state{queued};
  std::exception_ptr failure;  // what `work` or its group's commit threw
  position_token token;        // what its commit returns
  detail::fiber_waker waker;   // its fiber's host, when sent from a fiber
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
  // On a backend that holds statements (holds_statements): the running member's savepoint mark,
  // and the queued members kept whose statements may not be answered yet (the last ones of
  // in_group, in order). Their statements travel with later members' and the group's COMMIT
  // is preceded by one round trip that answers them all; a failure among them is the member's
  // whose savepoint came last before it, and those after it run again.
  bool holding = false;
  std::uint64_t turn_mark = 0;
  struct held_member {
    std::shared_ptr<request> r;
    std::uint64_t mark = 0;   // its savepoint's
    std::uint64_t after = 0;  // after its statements
  };
  std::vector<held_member> held;

  std::mutex queue_mutex;  // guards `queue`
  std::deque<std::shared_ptr<request>> queue;
  std::atomic<std::size_t> queued{0};  // queue.size(), read without queue_mutex

  explicit lane(group_commit& o);

  void push(std::shared_ptr<request> r) {
    const std::lock_guard guard(queue_mutex);
    queue.push_back(std::move(r));
    ++queued;
  }

  // Queues requests again, ahead of the others, in their order (their callers wait on).
  void requeue(const std::vector<std::shared_ptr<request>>& again) {
    const std::lock_guard guard(queue_mutex);
    for (auto it = again.rbegin(); it != again.rend(); ++it) {
      (*it)->state.store(request::queued, std::memory_order_relaxed);
      queue.push_front(*it);
      ++queued;
    }
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

  // Rolls the running member's work back to its savepoint; if even that fails, the shared
  // transaction cannot go on and the group fails with it (mutex held).
  void undo() noexcept {
    try {
      shared->exec("rollback to savepoint cleave_member", {});
      shared->exec("release savepoint cleave_member", {});
    } catch (...) {
      abandon(std::current_exception());
    }
  }

  // The held members have their tokens (their statements are answered, without failure).
  void resolve_held(std::size_t count) noexcept {
    for (std::size_t i = 0; i < count; ++i) {
      try {
        held[i].r->token = shared->position_before(held[i].after);
      } catch (...) {
        // (Only answers already in are read: nothing to fail. The token stays empty if it did.)
      }
    }
    held.erase(held.begin(), held.begin() + static_cast<std::ptrdiff_t>(count));
  }

  // After `why` was thrown with the held members' statements answered: when one of them failed
  // (before the savepoint of `current`, the running member, if given), its member's work is
  // rolled back and it fails alone; those held after it, and `current`, are queued to run again
  // (their statements came after the failure, which the database skipped, their savepoints
  // among them, so the newest savepoint is the failed member's); those before it keep their
  // work. Returns whether the failure was a held member's (mutex held).
  bool fail_held(std::exception_ptr why, const std::shared_ptr<request>* current) noexcept {
    const auto failed = shared->failed_statement();
    if (held.empty() || !failed || (current && *failed >= turn_mark)) return false;
    if (*failed < held.front().mark) {  // (not a held member's: nothing can tell whose)
      abandon(std::move(why));
      if (current) requeue({*current});
      return true;
    }
    auto j = held.size() - 1;
    while (held[j].mark > *failed) --j;
    resolve_held(j);  // (answered before the failure: kept)
    const auto failing = held.front().r;
    std::vector<std::shared_ptr<request>> again;
    for (std::size_t i = 1; i < held.size(); ++i) again.push_back(held[i].r);
    const std::size_t dropped = held.size();
    held.clear();
    undo();
    if (shared) {  // (else the group failed, with every member it kept)
      in_group.resize(in_group.size() - dropped);
      members -= dropped;
      failing->failure = std::move(why);
      failing->end();
    } else {
      again.clear();
    }
    if (current) again.push_back(*current);
    requeue(again);
    return true;
  }

  // Before the group commits, or lets a member in that drives its own turn: the held members'
  // statements are answered, so that a failure among them fails only the member it came from.
  void settle_held() noexcept {
    if (held.empty() || !shared) return;
    try {
      shared->position_so_far();  // sends and answers all that is held
    } catch (const transient_error&) {
      abandon(std::current_exception());  // the database gave the whole transaction up
      return;
    } catch (...) {
      if (!fail_held(std::current_exception(), nullptr)) abandon(std::current_exception());
      return;
    }
    resolve_held(held.size());
  }

  // Runs queued commands (mutex held on entry, released on return), committing each group when it
  // is full or nobody else waits to join it, until the queue is empty, or `own` (if given) has
  // ended, or (`one_group`) a group has ended or a caller waits for the lane (begin_write); then
  // wakes the next queued caller, if any, to go on: nobody serves others for ever.
  void serve(const request* own, bool one_group = false) {
    while (!own || own->state.load(std::memory_order_acquire) != request::ended) {
      auto r = pop();
      if (!r) break;
      run(r);
      end_turn();
      // (A caller waiting to drive its own turn gets the lane, the group open if it is.)
      if (one_group && (!shared || waiting.load() > 0)) break;
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
    if (next && next->state.compare_exchange_strong(expected, request::take_over)) next->wake();
    if (runner_on.load()) call_runner();  // (commands of fibers may be queued: requeued ones too)
  }

  // Runs the queued commands (up to the end of one group, if `one_group`) when the lane is free;
  // returns whether it did.
  bool serve_if_free(bool one_group) {
    if (queued.load() == 0 || !mutex.try_lock()) return false;
    serve(nullptr, one_group);
    return true;
  }

  // Waits until `done()`, on a thread that hosts fibers: suspends the running fiber, or, where it
  // may not be suspended, serves the lane meanwhile (a group at a time: its thread has its own
  // work) — this thread's other fibers' commands may be queued in it.
  void wait_on_fiber(detail::fiber_host* host, function_ref<bool()> done,
                     std::chrono::microseconds recheck = std::chrono::microseconds(0)) {
    if (host) return host->suspend_until(done, recheck);
    while (!done())
      if (!serve_if_free(true)) std::this_thread::yield();
  }

  // Commands written from fibers wait in the queue for this lane's runner: a thread of its own,
  // started with the first of them, that serves the queue a group at a time whenever it is not
  // empty and nobody else holds the lane. It is called when a fiber queues a command and whenever
  // a holder lets the lane go with commands queued (hand_over).
  void call_runner() {
    std::call_once(runner_started, [this] {
      runner = std::thread([this] { run_for_fibers(); });
      runner_on = true;
    });
    ++runner_calls;
    runner_calls.notify_one();
  }
  void run_for_fibers() {
    for (;;) {
      const auto seen = runner_calls.load();
      if (stopping.load()) return;
      if (queued.load() > 0 && serve_if_free(true)) {
        if (waiting.load() > 0) std::this_thread::yield();  // (a caller of begin_write first)
        continue;
      }
      runner_calls.wait(seen);
    }
  }
  void stop_runner() {
    stopping = true;
    ++runner_calls;
    runner_calls.notify_one();
    if (runner.joinable()) runner.join();
  }
  std::once_flag runner_started;
  std::thread runner;
  std::atomic<std::uint32_t> runner_calls{0};
  std::atomic<bool> runner_on{false}, stopping{false};

  // Whether another member is there to take a turn in the open group.
  bool member_waiting() const noexcept { return waiting.load() > 0 || queued.load() > 0; }

  // Ends the running member's turn (mutex held): commits the group when it had its max_group
  // turns (kept or not, so a stream of failing commands cannot keep it open) or nobody waits to
  // join it, else leaves it open for the next member.
  void end_turn() noexcept {
    if (!shared) return;  // the group already ended (its transaction broke)
    if (turns < owner.max_group_) {
      if (member_waiting()) return;  // the next member joins
      // Before committing a group that is not full, the CPU goes once to the threads ready to
      // run: callers whose commands just ended, about to send their next. Measured on two CPUs
      // with 32 senders: groups of 20 became 32 on PostgreSQL, 25 became 31 on SQLite. With no
      // other thread ready it returns at once.
      std::this_thread::yield();
      if (member_waiting()) return;
    }
    settle_held();
    if (!shared) return;
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
        r->failure = own_copy(end.failure);
      else
        r->token = position_token(r->token.transaction(), r->token.position(), end.lsn);
      r->end();
    }
    requests.clear();
  }

  // Ends the open group after its transaction broke: every member that kept work in it fails.
  void abandon(std::exception_ptr why) noexcept {
    held.clear();  // (failed with the others)
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
  std::uint64_t wait_for(const group_end& end) {
    if (detail::fiber_host::running())
      wait_on_fiber(  // (a group's end wakes nobody: looked at every 100 µs)
          detail::fiber_host::current(),
          [&] { return end.done.load(std::memory_order_acquire) != 0; },
          std::chrono::microseconds(100));
    else
      end.done.wait(0, std::memory_order_acquire);
    if (end.failure) std::rethrow_exception(own_copy(end.failure));
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
  std::optional<remembered_outcome> remembered() override {
    return dooming([&] { return inner_->remembered(); });
  }
  position_token position_so_far() override {
    return dooming([&] { return inner_->position_so_far(); });
  }
  void script(std::string_view sql) override {
    dooming([&] { inner_->script(sql); });
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
    const auto lsn = lane_.wait_for(*group);
    return position_token(mine.transaction(), mine.position(), lsn);
  }

  void rollback() noexcept override {
    std::unique_lock turn(lane_.mutex, std::adopt_lock);
    end();
    turn.unlock();
    lane_.hand_over();
  }

  // Runs a queued command's work as this member's turn (mutex held; the turn begun): keeps its
  // work in the group, or rolls it back to its savepoint and ends the request — or queues it
  // again, when what failed was a statement of a member held before it (fail_held).
  void run(const std::shared_ptr<request>& r) noexcept {
    bool keeping = false;
    try {
      keeping = r->work(*this);
      // (A failure its handler caught and went on from leaves its work out.)
      if (keeping && lane_.holding && lane_.shared->failed_statement())
        std::rethrow_exception(statement_failed());
      if (keeping) {
        keep_queued(r);
        return;
      }
    } catch (...) {
      r->failure = std::current_exception();
    }
    if (lane_.holding && !lane_.held.empty() && requeued_after_held_failure(r)) return;
    drop();
    r->end();
  }

 private:
  // (What a command's failure is, when its handler went on after a statement failed.)
  static std::exception_ptr statement_failed() {
    return std::make_exception_ptr(
        error_exception({errc::internal, "a statement of the command failed", {}}));
  }

  // A member not kept, while members are held: when what failed was a held member's statement
  // (this member's then were skipped), that member fails and this one is queued again; never is
  // this one's savepoint rolled back to then — the database skipped it.
  bool requeued_after_held_failure(const std::shared_ptr<request>& r) noexcept {
    std::exception_ptr answered_with;
    if (!doomed_ && !lane_.shared->failed_statement()) {
      try {
        lane_.shared->position_so_far();  // answers the held statements, to tell whose failed
      } catch (const transient_error&) {
        doomed_ = std::current_exception();
      } catch (...) {
        answered_with = std::current_exception();
      }
    }
    if (doomed_) return false;  // the whole group fails (drop)
    // (What the answers brought first: a held member's failure is its own error, not whatever
    // this member's work threw without asking the database.)
    auto why = answered_with ? answered_with : r->failure;
    if (!why) why = statement_failed();
    if (!lane_.fail_held(std::move(why), &r)) return false;
    r->failure = nullptr;
    return true;
  }

  // Keeps a queued command's work in the group. On a backend that holds statements it is held:
  // its statements travel with later members' (a member then costs no round trip of its own),
  // and its token waits for their answers.
  void keep_queued(const std::shared_ptr<request>& r) {
    if (!lane_.holding) {
      r->token = keep();
    } else {
      if (doomed_) std::rethrow_exception(doomed_);
      std::uint64_t after = 0;
      dooming([&] {
        lane_.shared->defer("release savepoint cleave_member", {});
        after = lane_.shared->statement_mark();
      });
      ++lane_.members;
      lane_.held.push_back({r, lane_.turn_mark, after});
    }
    lane_.in_group.push_back(r);
    r->state.store(request::kept, std::memory_order_relaxed);
  }

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
      lane_.undo();
  }

  lane& lane_;
  std::exception_ptr doomed_;  // the transient failure that doomed the shared transaction
};

group_commit::lane::lane(group_commit& o) : owner(o), running(std::make_unique<member>(*this)) {
  in_group.reserve(owner.max_group_);  // (keeping a member then allocates nothing)
}

void group_commit::lane::begin_turn(const request_meta& meta) {
  for (;;) {
    try {
      if (!shared) {
        shared = &owner.inner_.begin_write(meta, isolation::serializable);
        open = std::make_shared<group_end>();
        members = 0;
        turns = 0;
        holding = shared->holds_statements();
      }
      shared->rebind(meta);
      if (holding) turn_mark = shared->statement_mark();
      shared->defer("savepoint cleave_member", {});  // (sent with the member's first statement)
      ++turns;  // (once: a turn begun again after a held member failed is the same turn)
      running->join();
      return;
    } catch (const transient_error&) {
      abandon(std::current_exception());
      throw;
    } catch (...) {
      // Statements queued here may be sent at once (a full pipeline), and a held member's
      // failure learnt: that member fails, those after it run again, and this turn begins anew.
      if (shared && holding && fail_held(std::current_exception(), nullptr)) continue;
      abandon(std::current_exception());
      throw;
    }
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

group_commit::~group_commit() {
  for (auto& l : lanes_) l->stop_runner();
}

write_transaction& group_commit::begin_write(const request_meta& meta, isolation) {
  auto& l = *lanes_[next_lane_.fetch_add(1, std::memory_order_relaxed) % lanes_.size()];
  // (From a fiber too this blocks its thread, at most while the lane's holder ends its group: a
  // holder never waits for an I/O thread. The bus's own transactions go through write().)
  ++l.waiting;
  l.mutex.lock();
  --l.waiting;
  l.settle_held();  // (its caller drives the turn: nothing of another member may fail in it)
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
  auto* host = detail::fiber_host::running();
  auto& l = *lanes_[next_lane_.fetch_add(1, std::memory_order_relaxed) % lanes_.size()];
  auto r = std::make_shared<request>(meta, work);
  if (host) r->waker = host->waker();
  l.push(r);
  // Either this caller finds the lane free below, or its holder, letting go after this fence,
  // sees the queue not empty and wakes the first queued caller.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (host) {
    // On a fiber the command waits suspended, and the lane's runner serves it (with the others
    // queued meanwhile). A holder that lets go may mark it to take over: the runner serves it
    // all the same.
    l.call_runner();
    l.wait_on_fiber(detail::fiber_host::current(),
                    [&] { return r->state.load(std::memory_order_acquire) == request::ended; });
  } else {
    for (;;) {
      int state = r->state.load(std::memory_order_acquire);
      if (state == request::ended) break;
      if (state == request::take_over) {
        r->state.compare_exchange_strong(state, request::queued);
        continue;
      }
      // Queued: run the queue when the lane is free; else its holder runs it, or wakes us to.
      if (state == request::queued && l.mutex.try_lock()) {
        l.serve(r.get());
        continue;
      }
      r->state.wait(state, std::memory_order_acquire);
    }
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
