#pragma once
// The projector keeps projections current: inline ones inside each command's transaction (through
// the session source it hands to the command bus), async ones after commit, in batches, by a
// worker thread woken when a command commits — in this process directly, from other processes
// through the store's commit watch (PostgreSQL NOTIFY, SQLite data_version); a slow poll is the
// safety net.
//
// Async projections run as units of work: one per projection, or n for one declared with
// projection::partitions(n). On a database with one writer (SQLite) one projector process
// leads (a lease, released when its process dies) and runs every unit; the others stand by. On
// a database with many writers (PostgreSQL) every projector process shares the units: each
// claims units through leases in the database (cleave_checkpoints: owner, epoch, expiry by the
// database's clock), renews them every quarter of projector_options::unit_lease, aims at
// ⌈units / live processes⌉ of each group, releases the surplus when another process joins, and
// takes a dead or stalled process's units once their lease has run out. The main group's duties
// (materialized views, leader tasks, upgrades to a new version) stay with one leader.
//
// Exactly-once in effect: an async batch changes the view and moves the unit's checkpoint in one
// transaction, with a compare-and-set on the checkpoint and on the lease's epoch (raised by each
// claim) — a process that lost a unit can never commit a batch for it afterwards.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <cleave/core/function_ref.hpp>
#include <cleave/read/memory_view.hpp>
#include <cleave/read/projection.hpp>
#include <cleave/store/store.hpp>
#include <cleave/store/upcasting.hpp>

namespace cleave {

namespace read_detail {
struct unit_row;
}

struct projector_options {
  // The lease the worker must hold to run async projections; processes sharing a database
  // with the same name elect one leader. Empty: no election (every worker runs).
  std::string lease = "cleave.projector";
  // How many events an async batch takes when the projection keeps up (a short transaction, a
  // short wait for readers).
  std::size_t batch = 500;
  // While a projection is behind, each full batch doubles the next one, up to this many events:
  // fewer round trips and commits when catching up or starting on a long log. A fold holds a
  // batch's events in memory; a set-based batch does not.
  std::size_t max_batch = 100'000;
  // The same for projections with per-event handlers (no folds): each of their statements
  // updates a row again in one transaction, and PostgreSQL finds a row's newest version by
  // walking past those the transaction made before — smaller batches keep that walk short.
  std::size_t max_handler_batch = 2000;
  // The same for set-based projections, whose batches the database runs as one statement (no
  // events held in memory): larger, so a long catch-up is a few scans of the log.
  std::size_t max_set_based_batch = 1'000'000;
  // The same for memory views, which commit nothing per batch: small enough for the batch
  // being read ahead and the one being applied (on two threads) to stay in the CPUs' caches.
  // (Measured on 1M events: 4,096 to 16,384 alike; 32,768 some 8% slower.)
  std::size_t max_memory_batch = 8192;
  // How often the worker looks without being woken (the safety net), and how often a standby
  // tries the lease.
  std::chrono::milliseconds poll{1000};
  std::chrono::milliseconds standby_retry{200};
  // How long the table of a view's previous version is kept after a new one is swapped in (to
  // look at, or to put back by hand) before the worker drops it.
  std::chrono::milliseconds retired_grace{std::chrono::minutes(10)};
  // How long a unit's lease lasts unless renewed (a quarter of it is the renewal period), on a
  // database whose processes share the units: a process that stops renewing (killed, paused,
  // cut off) loses its units to the others after this long.
  std::chrono::milliseconds unit_lease{1000};
  // This process's name among projector processes (the owner of the units it holds); empty: the
  // host name, process id and a random suffix.
  std::string node;
};

// Where one unit of an async projection stands (projection::partitions).
struct unit_status {
  std::string name;  // the projection's name, or `<name>#<i>/<n>`
  position_token checkpoint;
  std::uint64_t lag_events = 0;
  std::string owner;  // the projector process holding its lease; empty when none does
};

// Where a projection stands.
struct projection_status {
  std::string name;
  projection_mode mode = projection_mode::async;
  position_token checkpoint;     // how far the log is applied (an inline view: the log head)
  std::uint64_t lag_events = 0;  // events committed after it
  double lag_seconds = 0;        // how long ago the oldest of those was recorded; 0 when current
  std::size_t dead_letters = 0;
  std::optional<std::uint64_t> rebuild_position;  // set while a rebuild is under way
  std::string version;  // what built the live view (projection::version_key); empty for none
  // The registered projection's version differs from the live view's: the new version is being
  // built beside it (the live view keeps answering eventual reads) and swapped in when done.
  bool upgrading = false;
  std::string group;  // its projector group (projection::group); empty for the main one
  // Its units (async projections), each with its checkpoint, lag and owner. The projection's
  // checkpoint is the least of theirs: a read at least as fresh as a token waits for every unit.
  std::vector<unit_status> units;
};

// How a rebuild is going; handed to the progress callback after each chunk.
struct rebuild_progress {
  std::uint64_t applied = 0;  // events applied into the shadow table so far (this run)
  // Events to apply, as counted when this run began (beside its first chunks). Counted only for
  // an on_progress callback; without one, the events applied, in the result.
  std::uint64_t total = 0;
  bool swapped = false;           // the shadow is now the live view
  bool resumed = false;           // an interrupted rebuild was picked up
  std::int64_t differences = -1;  // rows that differ from the live view (verify mode), else -1
  // How long the swap's transaction took (it holds the live table from its first statement
  // to its commit: reads of the view wait that long at most), in milliseconds; 0 before.
  double swap_ms = 0;
  // Verify mode: what differs, in plain words (columns, row counts, a sample of the keys of
  // differing rows), or why nothing was compared; empty when nothing differs.
  std::string difference;
};

struct rebuild_options {
  // Events per committed chunk (keeps transactions short). 0: as a catch-up's batches, which
  // double while the log goes on, up to max_batch (a fold) or max_set_based_batch (set-based).
  std::size_t chunk = 0;
  // Compare the shadow with the live view (both brought to the same position) before the
  // swap; when they differ nothing is swapped and the shadow is dropped. Only a rebuild of the
  // live view's own version is compared (a refactoring check): one to a new version is not.
  bool verify = false;
  std::function<void(const rebuild_progress&)> on_progress;
  // The rebuild's reservation, taken by the caller (projector::reserve_rebuild); null: the
  // rebuild takes it itself.
  const lease* reservation = nullptr;
};

class projector {
 public:
  // `db` (the event log, and the default view store) and `rewrites` are not owned and must
  // outlive the projector.
  explicit projector(store& db, const upcasters* rewrites = nullptr, projector_options opts = {});
  ~projector();
  projector(const projector&) = delete;
  projector& operator=(const projector&) = delete;

  // Registers a projection and creates its view (a migration of component "projection:<name>")
  // in `views` (another store; null: the event log's own). Refuses what cannot be atomic: an
  // inline projection whose view lives elsewhere than the write database. Register every
  // projection before start() and before the first command. `views` must outlive the projector.
  // When the view was built by another version of an async projection (projection::version),
  // the new version is built beside it by the worker (or catch_up()) and swapped in; until then
  // the old view answers eventual reads and its checkpoint stands still. An inline or
  // materialized projection whose version changed is refused (std::logic_error).
  void add(projection p, store* views = nullptr);
  // Registers an in-memory view (not owned; it must outlive the projector), built from the log
  // by the async worker or catch_up().
  void add(memory_view_base& view);
  // The projections registered, in order.
  std::vector<std::string> names() const;
  // Whether projection `name`'s view is a table in the log's own database, where every change
  // to it is a commit there (false for a memory view or a view in another store). Throws
  // errc::not_found for an unknown name.
  bool views_in_log_database(std::string_view name) const;

  // The session source for the command bus: the store's, with inline projections applied as
  // each event is appended, and the async worker woken after each commit.
  session_source& source() noexcept;

  // Starts / stops the async workers (and the commit watch): one per group of projections
  // (projection::group), each holding its own lease. `groups` names the ones this process runs
  // ("" is the main group, which also refreshes materialized views, keeps memory views and runs
  // leader tasks); empty: all of them. Throws std::invalid_argument for an unknown group.
  // stop() lets the batches in progress finish.
  void start(std::vector<std::string> groups = {});
  void stop();
  // Wakes the workers now.
  void notify();
  // Whether every worker this projector started holds its lease (runs its projections) now —
  // where processes share the units, whether this one holds every unit and leads the main group.
  bool leading() const noexcept;
  // This process's name among projector processes (projector_options::node).
  const std::string& node() const noexcept { return node_; }
  // The groups of the registered projections, the main one ("") first.
  std::vector<std::string> groups() const;

  // Applies every event the async projections have not seen yet, in batches, on the calling
  // thread (no lease needed: the checkpoint compare-and-set keeps it exactly-once), takes every
  // upgrade to a new version through its swap, refreshes every materialized view that is behind
  // and drops old versions' tables past their grace; returns how many events were applied (to
  // each projection, summed).
  std::size_t catch_up(std::size_t batch = 0);  // the first batch (0: the options'); then growing

  // An event whose handler kept failing, set aside so the projection could go on.
  struct dead_letter {
    position_token position;
    std::string type;
    json payload;
    std::string error;
  };
  // How many times an async batch is tried again when a handler fails on one of its events
  // before that event is parked as a dead letter (default 3). Set before start().
  void set_max_attempts(int n) noexcept { max_attempts_ = n < 1 ? 1 : n; }
  // The events parked for `name`, oldest first.
  std::vector<dead_letter> dead_letters(std::string_view name);
  // How many parked events of `name` are at or before `token` (all of them for an empty token):
  // those a read at least as fresh as `token` would have to include. For a memory view, its
  // failures.
  std::size_t dead_letters_through(std::string_view name, position_token token);
  // Applies the parked events of `name` again, each in its own transaction; those that now
  // succeed leave the dead letters. Returns how many did.
  std::size_t replay_dead_letters(std::string_view name);

  // Where an async projection has got to in the log (an inline one is always current).
  position_token checkpoint(std::string_view name);
  // Where projection `name` stands: checkpoint, lag in events and seconds, dead letters.
  projection_status status(std::string_view name);
  // How long ago the oldest event projection `name` has not applied yet was recorded (zero when
  // it is current). Cheaper than status().
  std::chrono::milliseconds staleness(std::string_view name);

  // Waits until projection `name` has reached `token` or `deadline` passes; returns where it
  // got to — at once when the log cannot have issued `token` (see could_have_issued). Woken as
  // batches commit: in this process, or in another one through the store's progress watch
  // (held while anyone waits and this projector does not lead).
  position_token wait_for(std::string_view name, position_token token, clock::time_point deadline);
  // Waits until projection `name` is at most `max` stale or `deadline` passes; returns the
  // staleness it got to.
  std::chrono::milliseconds wait_fresh(std::string_view name, std::chrono::milliseconds max,
                                       clock::time_point deadline);
  // Whether the log can have issued `token`: it is not past the log's head, nor (PostgreSQL)
  // its LSN past the primary's WAL position now. A token a command returned always can. Reads
  // the head.
  bool could_have_issued(position_token token);

  // Parks a wait for views without holding a thread (a transport's waiting reads): calls
  // `ready` once, from a thread of the projector's, when every projection in `names` has got
  // where `wanted` asks (at_least: its token; strong: the log's head; bounded: at most its
  // staleness), when the log cannot have issued the token, or when `deadline` passes. The read
  // then runs and finds the views where they are: wait_for and wait_fresh answer at once.
  // `ready` must be quick and must not call the projector. Nothing is read from the database on
  // the calling thread. Returns false, and never calls `ready`, when `limit` waits are parked.
  bool park(std::vector<std::string> names, consistency wanted, clock::time_point deadline,
            std::function<void()> ready, std::size_t limit);
  // How many waits are parked now.
  std::size_t parked() const;

  // Rebuilds async projection `name` from position 0 into a shadow table, in chunks that each
  // commit, then swaps it in for the live view in one transaction (readers never see a missing
  // or half-built view); the live view's table is kept for options.retired_grace. An
  // interrupted rebuild of the same version resumes where its last chunk committed; a shadow of
  // another version is dropped. The swap takes the live view's table before its checkpoint, as
  // batches do, and is tried again when the database gives it up (deadlock, serialization).
  // Throws error_exception (not_found for an unknown name; validation for a view that has no
  // table to rebuild: inline, in-memory, table-less).
  rebuild_progress rebuild(std::string_view name, const rebuild_options& options = {});
  // Throws what rebuild(name) would throw before starting: for a caller that starts it later.
  void check_rebuildable(std::string_view name) const;
  // Reserves the rebuild of `name` among every process using the database (a lease, held while
  // the object lives): null when a rebuild of it runs, here or in another process. rebuild()
  // takes it unless handed one (rebuild_options::reservation), and refuses (conflict) without.
  std::unique_ptr<lease> reserve_rebuild(std::string_view name);
  // Drops the shadow table of an unfinished rebuild of `name` (one that failed verification,
  // say); the live view is untouched.
  void discard_rebuild(std::string_view name);

  // The event log's store.
  store& log() noexcept { return db_; }

  // Work that only the leading projector does, run by its worker after each pass over the
  // projections (and by catch_up()): it does what is due and returns when it next wants to run
  // (Unix milliseconds; nullopt: only when woken), which the worker's sleep does not pass. A
  // commit anywhere wakes the worker. Exceptions are logged. Add before start().
  using leader_task = std::function<std::optional<std::int64_t>()>;
  void add_leader_task(leader_task task);

 private:
  class inline_source;
  class claims;  // the units this process holds, where processes share them
  struct entry {
    projection def;
    store* views;
    std::vector<std::string> read_types;  // the stored types it reads (empty: all)
    std::string version;                  // def.version_key()
    // The live view is of another version: the worker builds this one and swaps it in.
    std::unique_ptr<std::atomic<bool>> upgrading = std::make_unique<std::atomic<bool>>(false);
    // Its units' checkpoint names: the projection's own, or `<name>#<i>/<n>` for n partitions.
    std::vector<std::string> units;
  };
  // Unit `index` of `p` holds an event of stream `stream`.
  static bool in_unit(const entry& p, std::size_t index, std::string_view stream);
  // The checkpoint rows of p's current units (in unit order; one missing is left out).
  std::vector<read_detail::unit_row> unit_checkpoints(const entry& p);
  // Decides at add() how the view of `p` (async or inline or materialized) stands against its
  // version: made now, taken as it is, or to be upgraded (true).
  bool needs_upgrade(const projection& p, store& views, const std::string& version);
  // One step of the upgrade of `p` to its registered version: one chunk of `budget` events of
  // the rebuild, and the swap once it has caught up. Returns the events applied.
  std::size_t upgrade_step(const entry& p, std::size_t budget);
  // Drops the tables of old versions whose grace period has passed (at most once a second).
  void drop_retired();
  // Catches unit `index` of `p` up from its checkpoint in batches that grow from `batch` while
  // full; returns the events applied. With `epoch`, only while this process holds the unit's
  // lease under that epoch (else under the epoch its checkpoint row has now).
  std::size_t catch_up_unit(const entry& p, std::size_t index, std::size_t batch,
                            std::optional<std::int64_t> epoch = std::nullopt);
  // Applies `apply` and moves the checkpoint of p's unit `unit` from `from` to `to` in one
  // transaction, under lease epoch `epoch`; false when another projector moved it first or
  // claimed the unit since (nothing changed).
  bool commit_batch(const entry& p, std::string_view unit, std::int64_t epoch, position_token from,
                    position_token to, function_ref<void(write_transaction&)> apply);
  // Whether this projector shares units with other processes through leases (a database with
  // many writers, and a lease name set).
  bool shares_units() const noexcept;
  // Reads the log after `from` in batches — only events of `types`, unless empty, and of them
  // the members `fields` names — growing
  // from `batch` up to `max` while they come back full, and hands each to `apply` with the
  // position it reaches (false: stop); while one batch is applied the next is read on another
  // thread (one for the whole catch-up). Returns the events applied.
  std::size_t stream_batches(position_token from, std::size_t batch, std::size_t max,
                             std::span<const std::string> types, event_fields fields,
                             function_ref<bool(std::vector<stored_event>&, position_token)> apply);
  // The same for set-based work: spans of the log (up to `until`, unless empty) instead of its
  // events.
  std::size_t stream_spans(position_token from, std::size_t batch, std::size_t max,
                           position_token until, function_ref<bool(const log_span&)> apply);
  // The first span of a set-based catch-up whose batch is `batch`.
  std::size_t first_set_based_span(std::size_t batch) const;
  // Catches up the async projections of `group` (null: all) and the memory views (main group):
  // every unit, and a step of each upgrade; with `held`, only the units it holds (no upgrades).
  std::size_t catch_up_async(std::size_t batch = 0, const std::string* group = nullptr,
                             const claims* held = nullptr);
  // upgrade_step with the projection's largest batch, its failure logged (0 then).
  std::size_t try_upgrade_step(const entry& p);
  void apply_set_based(const entry& p, write_transaction& tx, std::string_view table,
                       position_token from, position_token to);
  // Refreshes the materialized views that are behind and due (all that are behind when `force`);
  // returns how many it refreshed.
  std::size_t refresh_materialized(bool force);
  std::chrono::milliseconds next_wait() const;
  void apply_batch(const entry& p, write_transaction& tx, std::string_view table,
                   std::vector<stored_event>& events, std::string_view park_as, int attempts);
  void apply_one_by_one(const entry& p, write_transaction& tx, std::vector<stored_event>& events,
                        std::string_view park_as, int attempts,
                        function_ref<void(const stored_event&, const projection::apply_fn&)> run);
  const entry& find(std::string_view name) const;
  memory_view_base* find_memory(std::string_view name) const;
  projection_mode mode_of(std::string_view name) const;
  // A batch, a refresh or a swap has committed here: wakes the waiters in this process and
  // announces it to other processes (store::announce_progress).
  void announce_progress();
  // Wakes the waiters of wait_for / wait_fresh and the parked waits: a view may have moved.
  void wake_waiters();
  // Wakes the waiters of wait_for / wait_fresh only.
  void wake_blocked();
  // Re-reads `observe()` (of projection `name`) until `done(value)` or `deadline`, sleeping
  // until the next committed batch between reads (or 200 ms, as a safety net); returns the last
  // value read.
  template <class Observe, class Done>
  auto await_progress(std::string_view name, Observe observe, Done done,
                      clock::time_point deadline);
  std::size_t catch_up_memory(memory_view_base& view, std::size_t batch);
  // One worker: a group's lease and thread; `woken` under wake_mutex_.
  struct worker_slot {
    std::string group;
    std::thread thread;
    std::atomic<bool> leading{false};
    bool woken = false;
  };
  void run_worker(worker_slot& slot);
  // run_worker where processes share the units (claims_).
  void run_shared_worker(worker_slot& slot);
  // Logs the exception being handled (a worker's pass failed; the next one tries again).
  static void log_worker_failure();
  // Sleeps until the slot is woken, the projector stops, or `longest` passes.
  void sleep_until_woken(worker_slot& slot, std::chrono::milliseconds longest);
  // What only the main group's worker does after catching up and checking its lease: leader
  // tasks, retired views.
  void main_group_duties();
  class waiting;     // parked waits, and the store's progress watch while anyone waits
  class rebuilding;  // one rebuild's steps

  store& db_;
  const upcasters* rewrites_;
  projector_options opts_;
  std::vector<entry> projections_;
  std::vector<memory_view_base*> memory_views_;
  std::unique_ptr<inline_source> source_;
  mutable std::mutex wake_mutex_;
  std::condition_variable wake_;
  std::mutex progress_mutex_;
  std::condition_variable progress_;  // notified after each committed batch
  std::uint64_t progress_count_ = 0;  // batches committed (and refreshes); under progress_mutex_
  std::atomic<bool> running_{false};
  std::atomic<bool> refresh_wanted_{false};
  std::vector<std::unique_ptr<worker_slot>> workers_;  // under wake_mutex_ (its threads' own)
  std::size_t group_count_ = 0;  // the groups there were at start(); under wake_mutex_
  std::thread watcher_;
  std::unique_ptr<commit_watch> watch_;
  std::vector<leader_task> leader_tasks_;
  // The earliest time a leader task asked to run again (Unix ms; max: none); set by the worker
  // and by catch_up().
  std::atomic<std::int64_t> next_task_ms_{INT64_MAX};
  // Runs the leader tasks, logging what they throw, and notes when they next want to run.
  void run_leader_tasks();
  int max_attempts_ = 3;
  std::mutex failures_mutex_;
  std::map<std::string, int, std::less<>> failures_;  // "projection@position" -> failed tries
  clock::time_point retired_checked_{};  // when drop_retired() last looked (worker thread)
  std::string node_;                     // projector_options::node, or one made up
  std::unique_ptr<claims> claims_;       // while started, where processes share the units
  std::unique_ptr<waiting> waiting_;     // last: its thread uses the members above
};

}  // namespace cleave
