#include <cleave/read/projector.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <future>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cleave/store/detail/forwarding.hpp>

namespace cleave {

namespace {

constexpr migration checkpoint_schema[] = {
    {1, "checkpoints",
     "create table cleave_checkpoints(name text primary key, transaction_id bigint not null,"
     "  position bigint not null)"},
    {2, "dead letters",
     "create table cleave_dead_letters(projection text not null, transaction_id bigint not null,"
     "  position bigint not null, type text not null, payload text not null, error text not null,"
     "  primary key (projection, transaction_id, position))"},
    {3, "rebuilds",
     "create table cleave_rebuilds(name text primary key, shadow text not null,"
     "  transaction_id bigint not null, position bigint not null)"},
};

struct parked_row {
  std::int64_t transaction_id = 0;
  std::int64_t position = 0;
  std::string type;
  std::string payload;
  std::string error;
};
CLEAVE_RECORD(parked_row, transaction_id, position, type, payload, error)

struct rebuild_row {
  std::string shadow;
  std::int64_t transaction_id = 0;
  std::int64_t position = 0;
};
CLEAVE_RECORD(rebuild_row, shadow, transaction_id, position)

struct token_row {
  std::int64_t transaction_id = 0;
  std::int64_t position = 0;
};
CLEAVE_RECORD(token_row, transaction_id, position)

position_token token_of(std::int64_t transaction, std::int64_t position) {
  return position_token(static_cast<std::uint64_t>(transaction),
                        static_cast<std::uint64_t>(position));
}
std::int64_t tx_of(position_token t) {
  return static_cast<std::int64_t>(t.transaction());
}
std::int64_t pos_of(position_token t) {
  return static_cast<std::int64_t>(t.position());
}

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Runs `body` with a read-only context on `db`, always ending the transaction.
template <class F>
auto reading(store& db, F&& body) {
  // The primary, never a standby: a checkpoint read behind the truth would make batches fail
  // their compare-and-set and waits last until the standby caught up.
  static const request_meta on_primary = [] {
    request_meta meta;
    meta.consistency = strong();
    return meta;
  }();
  auto& tx = db.begin_read(on_primary);
  try {
    read_context ctx(&tx, detail::no_meta);
    auto out = body(ctx);
    tx.finish();
    return out;
  } catch (...) {
    tx.finish();
    throw;
  }
}

// Runs `body` with a write context on `db`; commits unless it returns false or throws.
template <class F>
bool writing(store& db, F&& body) {
  // Read committed: the projector is the only writer of its views and checkpoints, and a
  // serializable batch could be given up for commands that merely append to the log.
  auto& tx = db.begin_write({}, isolation::read_committed);
  try {
    write_context ctx(&tx, detail::no_meta);
    if (!body(tx, ctx)) {
      tx.rollback();
      return false;
    }
  } catch (...) {
    tx.rollback();
    throw;
  }
  tx.commit();
  return true;
}

// `sql` with every `placeholder` replaced by `text`.
std::string replace_all(std::string_view sql, std::string_view placeholder, std::string_view text) {
  std::string out;
  out.reserve(sql.size() + text.size());
  for (std::size_t i = 0; i < sql.size();) {
    if (sql.compare(i, placeholder.size(), placeholder) == 0) {
      out += text;
      i += placeholder.size();
    } else {
      out += sql[i++];
    }
  }
  return out;
}

// Whether `token` lies within the log whose head is `head`: not past it in log order, and (on
// PostgreSQL) not past the WAL position read with it.
bool token_within(position_token token, position_token head) {
  return !(head < token) && token.lsn() <= head.lsn();
}

// Lag in events and seconds behind the log, from a status's checkpoint.
void fill_lag(store& log, projection_status& out) {
  const auto behind = log.distance(out.checkpoint);
  out.lag_events = behind.events;
  if (behind.events > 0)
    out.lag_seconds =
        static_cast<double>(std::max<std::int64_t>(0, unix_ms() - behind.oldest_recorded_at_ms)) /
        1000.0;
}

}  // namespace

std::string expand_view(std::string_view sql, std::string_view table) {
  return replace_all(sql, "{view}", table);
}

std::string view_context::with_table(std::string_view sql) const {
  return expand_view(sql, table_);
}

// The store's session source, with inline projections applied inside each command's transaction.
class projector::inline_source final : public session_source {
 public:
  explicit inline_source(projector& owner) : owner_(owner) {}

  write_transaction& begin_write(const request_meta& meta, isolation level) override {
    auto& inner = owner_.db_.begin_write(meta, level);
    std::lock_guard lock(mutex_);
    if (free_.empty()) {
      all_.push_back(std::make_unique<tx>(*this));
      free_.push_back(all_.back().get());
    }
    tx* t = free_.back();
    free_.pop_back();
    t->begin(inner);
    return *t;
  }
  read_transaction& begin_read(const request_meta& meta) override {
    return owner_.db_.begin_read(meta);
  }

 private:
  struct tx final : cleave::detail::forwarding_transaction {
    explicit tx(inline_source& o) : owner(o) {}
    inline_source& owner;

    void begin(write_transaction& inner) noexcept { inner_ = &inner; }

    std::uint64_t append(const pending_event& e) override {
      const auto version = inner_->append(e);
      stored_event stored;
      for (const auto& entry : owner.owner_.projections_) {
        const auto& p = entry.def;
        if (p.mode() != projection_mode::inline_) continue;
        const auto* handler = p.handler_for(e.type);
        if (!handler) continue;
        if (stored.type.empty()) {
          stored.position = inner_->position_so_far();
          stored.stream = e.stream;
          stored.stream_version = version;
          stored.type = e.type;
          stored.payload = e.payload;
        }
        view_context view(*inner_, p.table(), stored);
        (*handler)(stored.payload, view);  // the payload converted once, for every handler
      }
      return version;
    }
    position_token commit() override {
      auto* ending = std::exchange(inner_, nullptr);
      owner.give_back(this);
      auto token = ending->commit();
      owner.owner_.notify();  // after commit, outside the command's transaction
      return token;
    }
    void rollback() noexcept override {
      auto* ending = std::exchange(inner_, nullptr);
      owner.give_back(this);
      ending->rollback();
    }
  };

  void give_back(tx* t) {
    std::lock_guard lock(mutex_);
    free_.push_back(t);
  }

  projector& owner_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<tx>> all_;
  std::vector<tx*> free_;
};

// Parked waits: one thread re-reads, on each wake-up, the checkpoints (or staleness) the parked
// waits need — once per projection, not once per wait — and calls back those that are done or
// past their deadline. While anyone waits, parked or blocking, and this projector does not lead,
// it also holds the store's progress watch and wakes every waiter from it: progress made by a
// projector in another process.
class projector::waiting {
 public:
  explicit waiting(projector& owner) : owner_(owner) {}
  ~waiting() { stop(); }
  // Ends the thread; waits still parked are dropped (their readers are gone by now).
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      if (watch_) watch_->interrupt();
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  bool park(std::vector<std::string> names, consistency wanted, clock::time_point deadline,
            std::function<void()> ready, std::size_t limit) {
    {
      std::lock_guard lock(mutex_);
      if (count_ >= limit) return false;
      parked_.push_back({std::move(names), wanted, deadline, std::move(ready)});
      ++count_;
      start_locked();
      poke_locked();
    }
    wake_.notify_all();
    return true;
  }
  std::size_t parked() const {
    std::lock_guard lock(mutex_);
    return count_;
  }
  // A blocking waiter (wait_for, wait_fresh) on projection `name` begins / ends. The progress
  // watch is made before it first looks, so no batch committed after that look goes unnoticed.
  void enter(std::string_view name) {
    {
      std::lock_guard lock(mutex_);
      ++blocking_;
      auto it = blocking_names_.find(name);
      if (it == blocking_names_.end()) it = blocking_names_.emplace(name, 0).first;
      ++it->second;
      start_locked();
    }
    wake_.notify_all();
    ensure_watch();
  }
  void leave(std::string_view name) {
    std::lock_guard lock(mutex_);
    --blocking_;
    if (auto it = blocking_names_.find(name); --it->second == 0) blocking_names_.erase(it);
  }
  // Something may have moved (a batch here, a new wait): look again.
  void poke() {
    {
      std::lock_guard lock(mutex_);
      poke_locked();
    }
    wake_.notify_all();
  }

 private:
  struct parked_wait {
    std::vector<std::string> names;
    consistency wanted;
    clock::time_point deadline;
    std::function<void()> ready;
    bool head_checked = false;
  };
  // How long the watch is kept after the last waiter left (a PostgreSQL LISTEN that nobody
  // reads would hold back the server's notification queue).
  static constexpr auto idle_grace = std::chrono::seconds(1);

  void start_locked() {
    if (!thread_.joinable() && !stopping_) thread_ = std::thread([this] { run(); });
  }
  void poke_locked() {
    poked_ = true;
    if (watch_) watch_->interrupt();
  }
  bool busy_locked() const { return count_ > 0 || blocking_ > 0; }
  // Makes the progress watch unless this projector leads (then every batch is its own). One
  // thread makes it (a connection, on PostgreSQL); the others wait for that one.
  void ensure_watch() {
    std::unique_lock lock(mutex_);
    wake_.wait(lock, [&] { return !making_watch_; });
    if (watch_ || owner_.leading_) return;
    making_watch_ = true;
    lock.unlock();
    std::unique_ptr<commit_watch> made;
    try {
      made = owner_.db_.watch_progress();
    } catch (const std::exception& e) {
      spdlog::warn("projector: cannot watch for progress ({}); waiters poll", e.what());
    }
    lock.lock();
    making_watch_ = false;
    watch_ = std::move(made);
    lock.unlock();
    wake_.notify_all();
  }

  void run() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      if (!busy_locked()) {
        if (!wake_.wait_for(lock, idle_grace, [&] { return stopping_ || busy_locked(); })) {
          auto idle = std::move(watch_);
          lock.unlock();
          idle.reset();
          lock.lock();
          wake_.wait(lock, [&] { return stopping_ || busy_locked(); });
        }
        continue;
      }
      poked_ = false;
      auto waits = std::exchange(parked_, {});
      // Blocking waiters are woken here only for progress made elsewhere (this process's own
      // batches wake them directly).
      std::vector<std::string> blocked;
      if (watch_ && !owner_.leading_)
        for (const auto& [name, n] : blocking_names_) blocked.push_back(name);
      lock.unlock();
      ensure_watch();  // before the look: a batch committed after it wakes the watch
      std::vector<std::function<void()>> ready;
      std::map<std::string, position_token, std::less<>> at;
      const auto next = evaluate(waits, ready, at);
      for (auto& r : ready) r();
      if (moved(blocked, at)) owner_.wake_blocked();
      lock.lock();
      count_ -= ready.size();
      for (auto& w : waits) parked_.push_back(std::move(w));
      if (stopping_ || poked_) continue;
      // The safety net, as for blocking waiters: a wake-up lost (a dropped connection) costs
      // this much at most.
      const auto until = std::min(next, clock::now() + std::chrono::milliseconds(200));
      if (!watch_ || owner_.leading_) {  // leading: every batch is this process's own
        wake_.wait_until(lock, until, [&] { return stopping_ || poked_; });
        continue;
      }
      lock.unlock();
      watch_->wait_until(until);  // (interrupted by poke() and by the destructor)
      lock.lock();
      // Woken from outside (another process's batch; on SQLite, any commit): look again.
      if (clock::now() < until) poked_ = true;
    }
  }

  // Whether any of the projections `names` is somewhere else than when last looked at (reads
  // those `at` lacks into it).
  bool moved(const std::vector<std::string>& names,
             std::map<std::string, position_token, std::less<>>& at) {
    bool any = false;
    for (const auto& name : names) {
      auto it = at.find(name);
      try {
        if (it == at.end()) it = at.emplace(name, owner_.checkpoint(name)).first;
      } catch (const std::exception&) {
        return true;  // the waiter's own look meets it
      }
      auto [seen, fresh] = last_seen_.try_emplace(name, it->second);
      if (fresh || seen->second != it->second) any = true;
      seen->second = it->second;
    }
    return any;
  }

  // Keeps in `waits` those not done yet and moves the callbacks of the others to `ready`;
  // returns the earliest deadline of those kept. The checkpoints read go into `at`.
  clock::time_point evaluate(std::vector<parked_wait>& waits,
                             std::vector<std::function<void()>>& ready,
                             std::map<std::string, position_token, std::less<>>& at) {
    const auto now = clock::now();
    std::map<std::string, std::chrono::milliseconds, std::less<>> stale;
    std::optional<position_token> head;
    auto head_now = [&] {
      if (!head) head = owner_.db_.head();
      return *head;
    };
    bool behind = false;
    auto done = [&](parked_wait& w) {
      if (w.deadline <= now) return true;
      const auto& wanted = w.wanted;
      if (wanted.required == consistency::level::bounded) {
        for (const auto& name : w.names) {
          auto it = stale.find(name);
          if (it == stale.end()) it = stale.emplace(name, owner_.staleness(name)).first;
          if (it->second > wanted.max_staleness) return false;
        }
        return true;
      }
      if (wanted.required == consistency::level::strong && wanted.token.empty())
        w.wanted.token = head_now();  // every commit before the wait began
      if (w.wanted.token.empty()) return true;
      for (const auto& name : w.names) {
        const auto mode = owner_.mode_of(name);
        if (mode == projection_mode::inline_) continue;
        auto it = at.find(name);
        if (it == at.end()) it = at.emplace(name, owner_.checkpoint(name)).first;
        if (!(it->second < w.wanted.token)) continue;
        // Behind: first make sure the token is one the log can have issued.
        if (!std::exchange(w.head_checked, true) &&
            !token_within(w.wanted.token, head_now()))
          return true;
        if (mode == projection_mode::materialized) owner_.refresh_wanted_ = true;
        return false;
      }
      return true;
    };
    auto earliest = clock::time_point::max();
    std::size_t kept = 0;
    for (auto& w : waits) {
      bool finished = true;
      try {
        finished = done(w);
      } catch (const std::exception& e) {
        // The read itself meets the same failure and answers it.
        spdlog::debug("projector: a parked wait ends early: {}", e.what());
      }
      if (finished) {
        ready.push_back(std::move(w.ready));
        continue;
      }
      behind = true;
      earliest = std::min(earliest, w.deadline);
      if (&waits[kept] != &w) waits[kept] = std::move(w);
      ++kept;
    }
    waits.resize(kept);
    if (behind) owner_.notify();  // the worker may be asleep while events are waiting
    return earliest;
  }

  projector& owner_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<parked_wait> parked_;  // those not being evaluated now
  std::size_t count_ = 0;            // parked, including those being evaluated
  std::size_t blocking_ = 0;
  std::map<std::string, std::size_t, std::less<>> blocking_names_;  // waiters per projection
  std::map<std::string, position_token, std::less<>> last_seen_;   // the thread's alone
  bool poked_ = false, stopping_ = false, making_watch_ = false;
  std::unique_ptr<commit_watch> watch_;
  std::thread thread_;
};

projector::projector(store& db, const upcasters* rewrites, projector_options opts)
    : db_(db),
      rewrites_(rewrites),
      opts_(std::move(opts)),
      source_(std::make_unique<inline_source>(*this)),
      waiting_(std::make_unique<waiting>(*this)) {
  db_.migrate("cleave.projector", checkpoint_schema);
}

projector::~projector() {
  stop();
  waiting_->stop();  // before the members its thread reads go
}

void projector::add(projection p, store* views) {
  if (!views) views = &db_;
  if (std::any_of(projections_.begin(), projections_.end(),
                  [&](const entry& q) { return q.def.name() == p.name(); }))
    throw std::logic_error(fmt::format("a projection named '{}' is already registered", p.name()));
  if (p.mode() == projection_mode::inline_ && views != &db_)
    throw std::logic_error(fmt::format(
        "projection '{}' is inline but its view lives in another store: an inline view must be "
        "in the write database, to change in the command's own transaction; make it async",
        p.name()));
  if (p.mode() == projection_mode::materialized && views != &db_)
    throw std::logic_error(fmt::format(
        "projection '{}' is a materialized view of the write tables: it lives in the write "
        "database",
        p.name()));
  if (!p.batch_sql_text().empty() && (views != &db_ || p.mode() != projection_mode::async))
    throw std::logic_error(fmt::format(
        "projection '{}' is set-based: it reads the log where it lives, so it is async and its "
        "view is in the write database",
        p.name()));
  if (views != &db_) views->migrate("cleave.projector", checkpoint_schema);
  if (p.mode() == projection_mode::materialized) {
    const bool pg = db_.dialect() == "postgresql";
    const std::string sql =
        fmt::format("create {0} {1} as {2}; create unique index {1}_key on {1}({3})",
                    pg ? "materialized view" : "table", p.table(), p.select_sql(), p.key_columns());
    const migration view[] = {{1, "materialized view", sql}};
    views->migrate("projection:" + p.name(), view);
  } else if (!p.schema_sql().empty()) {
    const std::string sql = expand_view(p.schema_sql(), p.table());
    const migration view[] = {{1, "view", sql}};
    views->migrate("projection:" + p.name(), view);
  }
  writing(*views, [&](write_transaction&, write_context& tx) {
    tx.exec(
        "insert into cleave_checkpoints(name, transaction_id, position) values ($1, 0, 0) "
        "on conflict(name) do nothing",
        p.name());
    return true;
  });
  auto types = p.event_types();
  if (rewrites_ && !types.empty()) types = rewrites_->stored_as(types);
  projections_.push_back({std::move(p), views, std::move(types)});
}

void projector::add(memory_view_base& view) {
  const auto taken = names();
  if (std::find(taken.begin(), taken.end(), view.name()) != taken.end())
    throw std::logic_error(
        fmt::format("a projection named '{}' is already registered", view.name()));
  memory_views_.push_back(&view);
}

std::vector<std::string> projector::names() const {
  std::vector<std::string> out;
  for (const auto& p : projections_) out.push_back(p.def.name());
  for (const auto* m : memory_views_) out.push_back(m->name());
  return out;
}

projection_mode projector::mode_of(std::string_view name) const {
  return find_memory(name) ? projection_mode::memory : find(name).def.mode();
}

memory_view_base* projector::find_memory(std::string_view name) const {
  for (auto* m : memory_views_)
    if (m->name() == name) return m;
  return nullptr;
}

std::size_t projector::stream_batches(
    position_token from, std::size_t batch, std::size_t max, std::span<const std::string> types,
    function_ref<bool(std::vector<stored_event>&, position_token)> apply) {
  // While a batch is applied the next one is read on another thread (into the other buffer).
  std::size_t applied = 0;
  // This batch and the next, each read into again and again: their strings are reused.
  std::array<std::vector<stored_event>, 2> buffers;
  std::size_t current = 0;
  std::future<position_token> ahead;
  for (;;) {
    auto& events = buffers[current];
    const auto through =
        ahead.valid() ? ahead.get() : db_.read_events_into(from, batch, events, types);
    if (!(from < through)) return applied;
    const bool full = events.size() == batch;  // the log goes on: the next batch is larger
    if (full) batch = std::max(batch, std::min(batch * 2, max));
    from = through;
    if (full) {
      current = 1 - current;
      ahead = std::async(std::launch::async, [this, from, batch, types, &next = buffers[current]] {
        return db_.read_events_into(from, batch, next, types);
      });
    }
    const auto n = events.size();
    if (!apply(events, through)) return applied;  // (ahead's destructor waits for its read)
    applied += n;
    if (!full) return applied;
  }
}

std::size_t projector::catch_up_memory(memory_view_base& view, std::size_t batch) {
  return stream_batches(view.checkpoint(), batch, opts_.max_batch, {},
                        [&](std::vector<stored_event>& events, position_token) {
                          if (rewrites_)
                            for (auto& e : events) rewrites_->apply(e.type, e.payload);
                          view.apply(events);
                          wake_waiters();  // in this process only: other processes have their own
                          return true;
                        });
}

session_source& projector::source() noexcept {
  return *source_;
}

const projector::entry& projector::find(std::string_view name) const {
  for (const auto& q : projections_)
    if (q.def.name() == name) return q;
  throw error_exception({errc::not_found, fmt::format("no projection named '{}'", name), {}});
}

position_token projector::checkpoint(std::string_view name) {
  if (const auto* m = find_memory(name)) return m->checkpoint();
  const auto& p = find(name);
  if (p.def.mode() == projection_mode::inline_) return db_.head();
  return reading(*p.views, [&](read_context& ctx) {
    auto row = ctx.one<token_row>(
        "select transaction_id, position from cleave_checkpoints where name = $1", name);
    return row ? token_of(row->transaction_id, row->position) : position_token{};
  });
}

std::chrono::milliseconds projector::staleness(std::string_view name) {
  if (mode_of(name) == projection_mode::inline_) return {};
  // Not read_events(): on PostgreSQL it hides commits behind a running transaction, and a
  // staleness that overlooked them would pass stale data as fresh.
  const auto behind = db_.distance(checkpoint(name));
  if (behind.events == 0) return {};
  // At least 1 ms while anything is pending: an event recorded this very millisecond still
  // makes the view stale.
  return std::chrono::milliseconds(
      std::max<std::int64_t>(1, unix_ms() - behind.oldest_recorded_at_ms));
}

projection_status projector::status(std::string_view name) {
  if (const auto* m = find_memory(name)) {
    projection_status out;
    out.name = m->name();
    out.mode = projection_mode::memory;
    out.checkpoint = m->checkpoint();
    fill_lag(db_, out);
    out.dead_letters = m->failures().size();
    return out;
  }
  const auto& p = find(name);
  projection_status out;
  out.name = p.def.name();
  out.mode = p.def.mode();
  out.checkpoint = checkpoint(name);
  if (out.mode == projection_mode::async || out.mode == projection_mode::materialized) {
    fill_lag(db_, out);
  }
  reading(*p.views, [&](read_context& ctx) {
    out.dead_letters = static_cast<std::size_t>(
        ctx.one<std::int64_t>("select count(*) from cleave_dead_letters where projection = $1",
                              name)
            .value_or(0));
    if (auto r = ctx.one<rebuild_row>(
            "select shadow, transaction_id, position from cleave_rebuilds where name = $1", name))
      out.rebuild_position = static_cast<std::uint64_t>(r->position);
    return 0;
  });
  return out;
}

// The handlers of `events`, each in a savepoint: a failing event is retried by failing the
// whole batch until it has failed `attempts` times, then parked as a dead letter under
// `park_as`.
void projector::apply_one_by_one(
    const entry& p, write_transaction& tx, std::vector<stored_event>& events,
    std::string_view park_as, int attempts,
    function_ref<void(const stored_event&, const projection::apply_fn&)> run) {
  for (auto& e : events) {
    const auto* handler = p.def.handler_for(e.type);
    if (!handler) continue;
    tx.exec("savepoint cleave_event", {});
    try {
      run(e, *handler);
      tx.exec("release savepoint cleave_event", {});
    } catch (const std::exception& failure) {
      tx.exec("rollback to savepoint cleave_event", {});
      tx.exec("release savepoint cleave_event", {});
      const std::string key = fmt::format("{}@{}", park_as, e.position.to_string());
      {
        std::lock_guard lock(failures_mutex_);
        if (++failures_[key] < attempts) throw;  // the whole batch is tried again later
        failures_.erase(key);
      }
      // Tried enough: park it and go on, so one bad event does not stop the projection.
      const std::string payload = e.payload.dump();
      const std::string why = failure.what();
      write_context ctx(&tx, detail::no_meta);
      ctx.exec(
          "insert into cleave_dead_letters(projection, transaction_id, position, type, payload, "
          "error) values ($1, $2, $3, $4, $5, $6) on conflict do nothing",
          park_as, tx_of(e.position), pos_of(e.position), e.type, payload, why);
      spdlog::warn("projection {}: parked {} at {}: {}", p.def.name(), e.type,
                   e.position.to_string(), why);
    }
  }
}

// Applies `events` to table `table` of projection `p` inside `tx`: the handlers (a failing
// event retried, then parked under `park_as`: apply_one_by_one), then the folds.
void projector::apply_batch(const entry& p, write_transaction& tx, std::string_view table,
                            std::vector<stored_event>& events, std::string_view park_as,
                            int attempts) {
  if (rewrites_)
    for (auto& e : events) rewrites_->apply(e.type, e.payload);
  const auto run = [&](const stored_event& e, const projection::apply_fn& handler) {
    view_context view(tx, table, e);
    handler(e.payload, view);
  };
  // First the whole batch in one savepoint; only when a handler fails is it run again with a
  // savepoint per event, to find the failing one (three statements per event, on PostgreSQL
  // three round trips).
  tx.exec("savepoint cleave_batch", {});
  try {
    for (const auto& e : events)
      if (const auto* handler = p.def.handler_for(e.type)) run(e, *handler);
    tx.exec("release savepoint cleave_batch", {});
  } catch (const std::exception&) {
    tx.exec("rollback to savepoint cleave_batch", {});
    tx.exec("release savepoint cleave_batch", {});
    apply_one_by_one(p, tx, events, park_as, attempts, run);
  }
  if (p.def.folds().empty() || events.empty()) return;
  std::vector<const stored_event*> of_type;
  for (const auto& [type, fold] : p.def.folds()) {
    of_type.clear();
    for (const auto& e : events)
      if (e.type == type) of_type.push_back(&e);
    if (of_type.empty()) continue;
    view_context view(tx, table, *of_type.back());
    fold(of_type, view);
  }
}

// Runs the projection's batch statement over the log's rows after `from` up to `to`.
void projector::apply_set_based(const entry& p, write_transaction& tx, std::string_view table,
                                position_token from, position_token to) {
  const auto run = [&](std::string_view rows, std::span<const sql_value> params) {
    const std::string sql = replace_all(expand_view(p.def.batch_sql_text(), table), "{events}",
                                        fmt::format("(select * from cleave_events where {}) as "
                                                    "events",
                                                    rows));
    tx.exec(sql, params);
  };
  if (db_.dialect() != "postgresql") {
    const sql_value params[] = {pos_of(from), pos_of(to)};
    return run("position > $1 and position <= $2", params);
  }
  // Spelled out rather than as row comparisons ((transaction_id, position) > (…)): PostgreSQL
  // estimates those at one row (a sort-based aggregate that spills to disk) and does not end the
  // index scan at the upper one. A bulk load is one transaction: the first form.
  // Planned for these bounds, not generically (until this batch commits): a prepared
  // statement's generic plan assumes a small range, an index scan, where a long catch-up is
  // best served by a sequential scan.
  tx.exec("select set_config('plan_cache_mode', 'force_custom_plan', true)", {});
  const std::string from_tx = std::to_string(from.transaction()),
                    to_tx = std::to_string(to.transaction());
  if (from.transaction() == to.transaction()) {
    const sql_value params[] = {std::string_view(from_tx), pos_of(from), pos_of(to)};
    return run("transaction_id = $1::text::xid8 and position > $2 and position <= $3", params);
  }
  const sql_value params[] = {std::string_view(from_tx), pos_of(from), std::string_view(to_tx),
                              pos_of(to)};
  run("(transaction_id = $1::text::xid8 and position > $2) or (transaction_id > $1::text::xid8 "
      "and transaction_id < $3::text::xid8) or (transaction_id = $3::text::xid8 and position <= "
      "$4)",
      params);
}

bool projector::commit_batch(const entry& p, position_token from, position_token to,
                             function_ref<void(write_transaction&)> apply) {
  const bool moved = writing(*p.views, [&](write_transaction& tx, write_context& ctx) {
    apply(tx);
    // Another projector that moved the checkpoint first wins: its batch stands, this one not.
    return ctx.exec(
               "update cleave_checkpoints set transaction_id = $2, position = $3 "
               "where name = $1 and transaction_id = $4 and position = $5",
               p.def.name(), tx_of(to), pos_of(to), tx_of(from), pos_of(from)) == 1;
  });
  if (moved) announce_progress();
  return moved;
}

std::size_t projector::catch_up_one(const entry& p, std::size_t batch) {
  auto from = checkpoint(p.def.name());
  if (p.def.batch_sql_text().empty()) {
    // Only the types it handles are read; the checkpoint moves past the others all the same.
    return stream_batches(from, batch, opts_.max_batch, p.read_types,
                          [&](std::vector<stored_event>& events, position_token to) {
                            if (!commit_batch(p, from, to, [&](write_transaction& tx) {
                                  apply_batch(p, tx, p.def.table(), events, p.def.name(),
                                              max_attempts_);
                                }))
                              return false;
                            from = to;
                            return true;
                          });
  }
  // Set-based: one statement per batch.
  return stream_spans(from, first_set_based_span(batch), opts_.max_set_based_batch, {},
                      [&](const log_span& span) {
                        if (!commit_batch(p, from, span.last, [&](write_transaction& tx) {
                              apply_set_based(p, tx, p.def.table(), from, span.last);
                            }))
                          return false;
                        from = span.last;
                        return true;
                      });
}

// A set-based batch holds no events in memory, and a statement over 500 rows costs little less
// than one over 30,000 (planning, the view's upserts): the first span is already 1/32 of the
// largest (a bound, not a wait: a projection that keeps up gets the few events there are); the
// spans double from there, the next one counted while this one runs.
std::size_t projector::first_set_based_span(std::size_t batch) const {
  return std::max(batch, opts_.max_set_based_batch / 32);
}

std::size_t projector::stream_spans(position_token from, std::size_t batch, std::size_t max,
                                    position_token until,
                                    function_ref<bool(const log_span&)> apply) {
  // As stream_batches: the next span is counted while this one is applied.
  std::size_t applied = 0;
  std::future<log_span> ahead;
  for (;;) {
    const auto span = ahead.valid() ? ahead.get() : db_.read_span(from, batch, until);
    if (span.events == 0) return applied;
    const bool full = span.events == batch;
    if (full) batch = std::max(batch, std::min(batch * 2, max));
    from = span.last;
    if (full)
      ahead = std::async(std::launch::async,
                         [this, from, batch, until] { return db_.read_span(from, batch, until); });
    if (!apply(span)) return applied;  // (ahead's destructor waits for its read)
    applied += span.events;
    if (!full) return applied;
  }
}

std::vector<projector::dead_letter> projector::dead_letters(std::string_view name) {
  const auto& p = find(name);
  auto rows = reading(*p.views, [&](read_context& ctx) {
    return ctx.many<parked_row>(
        "select transaction_id, position, type, payload, error from cleave_dead_letters "
        "where projection = $1 order by transaction_id, position",
        name);
  });
  std::vector<dead_letter> out;
  for (auto& r : rows) {
    auto payload = parse_json(r.payload);
    out.push_back({token_of(r.transaction_id, r.position), std::move(r.type),
                   payload ? std::move(*payload) : json(nullptr), std::move(r.error)});
  }
  return out;
}

std::size_t projector::replay_dead_letters(std::string_view name) {
  const auto& p = find(name);
  std::size_t replayed = 0;
  for (const auto& letter : dead_letters(name)) {
    try {
      writing(*p.views, [&](write_transaction& tx, write_context& ctx) {
        stored_event e;
        e.position = letter.position;
        e.type = letter.type;
        e.payload = letter.payload;
        if (const auto* handler = p.def.handler_for(e.type)) {
          view_context view(tx, p.def.table(), e);
          (*handler)(e.payload, view);
        }
        ctx.exec(
            "delete from cleave_dead_letters where projection = $1 and transaction_id = $2 and "
            "position = $3",
            name, tx_of(e.position), pos_of(e.position));
        return true;
      });
    } catch (const std::exception& failure) {
      // Still failing: it stays parked.
      spdlog::warn("projection {}: replay of {} failed again: {}", name, letter.type,
                   failure.what());
      continue;
    }
    ++replayed;
  }
  return replayed;
}

void projector::announce_progress() {
  db_.announce_progress();
  wake_waiters();
}

void projector::wake_waiters() {
  wake_blocked();
  waiting_->poke();
}

void projector::wake_blocked() {
  {
    std::lock_guard lock(progress_mutex_);
    ++progress_count_;
  }
  progress_.notify_all();
}

template <class Observe, class Done>
auto projector::await_progress(std::string_view name, Observe observe, Done done,
                               clock::time_point deadline) {
  waiting_->enter(name);
  struct leave_on_exit {
    waiting& w;
    std::string_view name;
    ~leave_on_exit() { w.leave(name); }
  } leave{*waiting_, name};
  for (;;) {
    std::uint64_t seen = 0;
    {
      std::lock_guard lock(progress_mutex_);
      seen = progress_count_;
    }
    // Observed outside the lock (it reads the database), so waiters never hold up the worker;
    // a batch committed meanwhile changes the count, and the wait below does not sleep.
    const auto now = observe();
    if (done(now) || clock::now() >= deadline) return now;
    notify();  // the worker may be asleep while events are waiting
    std::unique_lock lock(progress_mutex_);
    progress_.wait_until(lock, std::min(deadline, clock::now() + std::chrono::milliseconds(200)),
                         [&] { return progress_count_ != seen; });
  }
}

position_token projector::wait_for(std::string_view name, position_token token,
                                   clock::time_point deadline) {
  const auto mode = mode_of(name);
  if (mode == projection_mode::inline_) return token;
  if (mode == projection_mode::materialized)
    refresh_wanted_ = true;  // a reader waits: refresh now, not at the policy's pace
  bool head_checked = false;
  return await_progress(name, [&] { return checkpoint(name); },
                        [&](position_token at) {
                          if (!(at < token)) return true;
                          // Behind: no use waiting for a token the log cannot have issued.
                          return !std::exchange(head_checked, true) && !could_have_issued(token);
                        },
                        deadline);
}

bool projector::could_have_issued(position_token token) {
  return token_within(token, db_.head());
}

bool projector::park(std::vector<std::string> names, consistency wanted,
                     clock::time_point deadline, std::function<void()> ready, std::size_t limit) {
  return waiting_->park(std::move(names), wanted, deadline, std::move(ready), limit);
}

std::size_t projector::parked() const {
  return waiting_->parked();
}

std::chrono::milliseconds projector::wait_fresh(std::string_view name,
                                                std::chrono::milliseconds max,
                                                clock::time_point deadline) {
  return await_progress(name, [&] { return staleness(name); },
                        [&](std::chrono::milliseconds stale) { return stale <= max; }, deadline);
}

std::chrono::milliseconds projector::next_wait() const {
  // A materialized view's time-based refresh must not wait for the slow poll.
  auto wait = opts_.poll;
  for (const auto& p : projections_)
    if (p.def.mode() == projection_mode::materialized)
      wait = std::min(wait, std::max(p.def.refresh().after, std::chrono::milliseconds(1)));
  return wait;
}

std::size_t projector::catch_up(std::size_t batch) {
  const auto applied = catch_up_async(batch);
  refresh_materialized(true);
  return applied;
}

std::size_t projector::catch_up_async(std::size_t batch) {
  if (batch == 0) batch = opts_.batch;
  std::size_t applied = 0;
  for (const auto& p : projections_)
    if (p.def.mode() == projection_mode::async) applied += catch_up_one(p, batch);
  for (auto* m : memory_views_) applied += catch_up_memory(*m, batch);
  return applied;
}

std::size_t projector::refresh_materialized(bool force) {
  const bool wanted = refresh_wanted_.exchange(false);
  std::size_t refreshed = 0;
  for (const auto& p : projections_) {
    if (p.def.mode() != projection_mode::materialized) continue;
    const auto& name = p.def.name();
    const auto at = checkpoint(name);
    const auto behind = db_.distance(at);
    if (behind.events == 0) continue;
    const auto& policy = p.def.refresh();
    const bool due = force || wanted || behind.events >= policy.after_events ||
                     unix_ms() - behind.oldest_recorded_at_ms >= policy.after.count();
    if (!due) continue;
    // Everything at or before `upto` has committed, so the refresh, which starts after this,
    // sees it: the recorded position never claims more than the view holds.
    const auto upto = db_.readable_head();
    writing(db_, [&](write_transaction& tx, write_context& ctx) {
      if (db_.dialect() == "postgresql") {
        tx.exec(fmt::format("refresh materialized view concurrently {}", p.def.table()), {});
      } else {
        tx.exec(fmt::format("delete from {}", p.def.table()), {});
        tx.exec(fmt::format("insert into {} {}", p.def.table(), p.def.select_sql()), {});
      }
      ctx.exec(
          "update cleave_checkpoints set transaction_id = $2, position = $3 where name = $1 and "
          "(transaction_id < $2 or (transaction_id = $2 and position < $3))",
          name, tx_of(upto), pos_of(upto));
      return true;
    });
    ++refreshed;
  }
  if (refreshed > 0) {
    announce_progress();
  }
  return refreshed;
}

rebuild_progress projector::rebuild(std::string_view name, const rebuild_options& options) {
  const auto& p = find(name);
  if (p.def.mode() == projection_mode::materialized) {
    // A materialized view is rebuilt whole by its refresh.
    refresh_wanted_ = true;
    refresh_materialized(false);
    rebuild_progress done;
    done.swapped = true;
    if (options.on_progress) options.on_progress(done);
    return done;
  }
  if (p.def.mode() != projection_mode::async || p.def.schema_sql().empty())
    throw error_exception(
        {errc::validation,
         fmt::format("projection '{}' cannot be rebuilt: only an async projection with a schema "
                     "has a view to rebuild beside the live one",
                     name),
         {}});
  store& views = *p.views;
  rebuild_progress progress;
  const bool set_based = !p.def.batch_sql_text().empty();
  const std::size_t first_chunk = options.chunk ? options.chunk
                                  : set_based   ? first_set_based_span(opts_.batch)
                                                : opts_.batch,
                    max_chunk = options.chunk ? options.chunk
                                : set_based   ? opts_.max_set_based_batch
                                              : opts_.max_batch;
  // The total is counted beside the first chunks, for a progress callback: its first report
  // waits for it.
  std::future<std::uint64_t> total;
  auto report = [&](bool last = false) {
    if (total.valid()) progress.total = total.get();
    if (last && !options.on_progress) progress.total = progress.applied;
    if (options.on_progress) options.on_progress(progress);
  };

  // Find the rebuild under way, or start one: a fresh shadow table and its row, in one commit.
  auto current = reading(views, [&](read_context& ctx) {
    return ctx.one<rebuild_row>(
        "select shadow, transaction_id, position from cleave_rebuilds where name = $1", name);
  });
  rebuild_row state;
  if (current) {
    state = *current;
    progress.resumed = true;
  } else {
    state.shadow = fmt::format("{}_rebuild_{}", p.def.table(), unix_ms());
    writing(views, [&](write_transaction& tx, write_context& ctx) {
      tx.script(expand_view(p.def.schema_sql(), state.shadow));
      ctx.exec(
          "insert into cleave_rebuilds(name, shadow, transaction_id, position) values ($1, $2, 0, "
          "0)",
          name, state.shadow);
      return true;
    });
  }
  auto at = token_of(state.transaction_id, state.position);
  if (options.on_progress)
    total = std::async(std::launch::async, [this, at] {
      return db_.read_span(at, std::numeric_limits<std::int64_t>::max()).events;
    });

  // Chunks: each applies events into the shadow and moves the rebuild's own position.
  // One chunk: applied to the shadow with the rebuild's own position moved from `at` to `to`.
  auto commit_chunk = [&](std::size_t count, position_token to,
                          function_ref<void(write_transaction&)> apply) {
    const bool moved = writing(views, [&](write_transaction& tx, write_context& ctx) {
      apply(tx);
      return ctx.exec(
                 "update cleave_rebuilds set transaction_id = $2, position = $3 where name = $1 "
                 "and transaction_id = $4 and position = $5",
                 name, tx_of(to), pos_of(to), tx_of(at), pos_of(at)) == 1;
    });
    if (!moved)
      throw error_exception(
          {errc::conflict, fmt::format("another rebuild of '{}' is running", name), {}});
    progress.applied += count;
    at = to;
    report();
  };
  // Chunks up to `until` (empty: the log's end).
  auto fill = [&](position_token until) {
    if (set_based) {
      stream_spans(at, first_chunk, max_chunk, until, [&](const log_span& span) {
        commit_chunk(span.events, span.last, [&](write_transaction& tx) {
          apply_set_based(p, tx, state.shadow, at, span.last);
        });
        return true;
      });
      return;
    }
    // Every event (not only the handled types): progress counts events against the log's.
    stream_batches(
        at, first_chunk, max_chunk, {}, [&](std::vector<stored_event>& events, position_token) {
          const bool past = !until.empty() && std::erase_if(events, [&](const stored_event& e) {
                                                return until < e.position;
                                              }) > 0;
          if (events.empty()) return false;
          commit_chunk(events.size(), events.back().position, [&](write_transaction& tx) {
            apply_batch(p, tx, state.shadow, events, state.shadow, 1);
          });
          return !past;
        });
  };
  fill({});

  // The swap: with the live checkpoint locked, the shadow must be at least as far as the live
  // view (else it catches up again and retries); it then replaces the live table and its
  // position becomes the checkpoint. A live batch that raced it fails its compare-and-set.
  for (int attempt = 0;; ++attempt) {
    const auto live_at = checkpoint(name);
    if (at < live_at) {
      const auto before = at;
      fill(live_at);
      // The log is held back (a long transaction on PostgreSQL): give it a moment.
      if (at == before) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    // Verify: bring a copy of the live view's position to the shadow's, then compare.
    std::vector<stored_event> live_gap;
    if (options.verify && live_at < at && !set_based) {
      live_gap = db_.read_events(live_at, std::numeric_limits<std::int32_t>::max());
      std::erase_if(live_gap, [&](const stored_event& e) { return at < e.position; });
    }
    bool differs = false;
    const bool swapped = writing(views, [&](write_transaction& tx, write_context& ctx) {
      if (ctx.exec("update cleave_checkpoints set transaction_id = $2, position = $3 where name "
                   "= $1 and transaction_id = $4 and position = $5",
                   name, tx_of(at), pos_of(at), tx_of(live_at), pos_of(live_at)) != 1)
        return false;  // the live view moved meanwhile: look again
      if (options.verify) {
        if (set_based)
          apply_set_based(p, tx, p.def.table(), live_at, at);
        else
          apply_batch(p, tx, p.def.table(), live_gap, name, 1);
        const auto live = p.def.table();
        const auto count = [&](const std::string& a, const std::string& b) {
          return ctx
              .one<std::int64_t>(fmt::format(
                  "select count(*) from (select * from {} except select * from {}) as d", a, b))
              .value_or(0);
        };
        progress.differences = count(live, state.shadow) + count(state.shadow, live);
        if (progress.differences != 0) {
          differs = true;
          return false;
        }
      }
      tx.exec(fmt::format("drop table {}", p.def.table()), {});
      tx.exec(fmt::format("alter table {} rename to {}", state.shadow, p.def.table()), {});
      // Dead letters now are the rebuild's: the old view's no longer apply.
      ctx.exec("delete from cleave_dead_letters where projection = $1", name);
      ctx.exec("update cleave_dead_letters set projection = $1 where projection = $2", name,
               state.shadow);
      ctx.exec("delete from cleave_rebuilds where name = $1", name);
      return true;
    });
    if (differs) {
      spdlog::warn("projection {}: rebuild differs from the live view in {} rows; not swapped",
                   name, progress.differences);
      report(true);
      return progress;
    }
    if (swapped) break;
    if (attempt > 1000)
      throw error_exception({errc::unavailable,
                             fmt::format("rebuild of '{}' could not catch the live view", name),
                             {}});
  }
  progress.swapped = true;
  announce_progress();
  report(true);
  return progress;
}

void projector::discard_rebuild(std::string_view name) {
  const auto& p = find(name);
  writing(*p.views, [&](write_transaction& tx, write_context& ctx) {
    if (auto r = ctx.one<rebuild_row>(
            "select shadow, transaction_id, position from cleave_rebuilds where name = $1", name)) {
      tx.exec(fmt::format("drop table if exists {}", r->shadow), {});
      ctx.exec("delete from cleave_dead_letters where projection = $1", r->shadow);
    }
    ctx.exec("delete from cleave_rebuilds where name = $1", name);
    return true;
  });
}

void projector::notify() {
  {
    std::lock_guard lock(wake_mutex_);
    woken_ = true;
  }
  wake_.notify_one();
}

void projector::run_worker() {
  std::unique_ptr<lease> held;
  while (running_) {
    if (!opts_.lease.empty() && !held) {
      try {
        held = db_.try_lease(opts_.lease);
      } catch (const std::exception& e) {
        spdlog::error("projector: taking the lease: {}", e.what());
      }
      if (!held) {
        std::unique_lock lock(wake_mutex_);
        wake_.wait_for(lock, opts_.standby_retry, [&] { return !running_.load(); });
        continue;
      }
      spdlog::info("projector: leading (lease '{}')", opts_.lease);
    }
    leading_ = true;
    std::size_t applied = 0;
    try {
      applied = catch_up_async();
      refresh_materialized(false);
    } catch (const error_exception& e) {
      spdlog::error("projector: {}", e.error().describe());
    } catch (const std::exception& e) {
      spdlog::error("projector: {}", e.what());
    }
    if (applied > 0) continue;
    {
      std::unique_lock lock(wake_mutex_);
      wake_.wait_for(lock, next_wait(), [&] { return woken_ || !running_; });
      woken_ = false;
    }
    if (held && !held->held()) {
      spdlog::warn("projector: lost the lease '{}'", opts_.lease);
      held.reset();
      leading_ = false;
    }
  }
  leading_ = false;
}

void projector::start() {
  if (running_.exchange(true)) return;
  watch_ = db_.watch_commits();
  watcher_ = std::thread([this] {
    while (running_) {
      watch_->wait_until(clock::now() + opts_.poll);
      if (running_) notify();
    }
  });
  worker_ = std::thread([this] { run_worker(); });
}

void projector::stop() {
  if (!running_.exchange(false)) return;
  notify();
  watch_->interrupt();
  worker_.join();
  watcher_.join();
  watch_.reset();
}

}  // namespace cleave
