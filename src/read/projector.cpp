#include <cleave/read/projector.hpp>

#include <algorithm>

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
};

struct parked_row {
  std::int64_t transaction_id = 0;
  std::int64_t position = 0;
  std::string type;
  std::string payload;
  std::string error;
};
CLEAVE_RECORD(parked_row, transaction_id, position, type, payload, error)

std::string replace_view(std::string_view sql, std::string_view table) {
  std::string out;
  out.reserve(sql.size() + table.size());
  for (std::size_t i = 0; i < sql.size();) {
    if (sql.compare(i, 6, "{view}") == 0) {
      out += table;
      i += 6;
    } else {
      out += sql[i++];
    }
  }
  return out;
}

}  // namespace

std::string view_context::with_table(std::string_view sql) const {
  return replace_view(sql, table_);
}

// The store's session source, with inline projections applied inside each command's transaction.
class projector::inline_source final : public session_source {
 public:
  explicit inline_source(projector& owner) : owner_(owner) {}

  write_transaction& begin_write(const request_meta& meta) override {
    auto& inner = owner_.db_.begin_write(meta);
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
      for (const auto& p : owner.owner_.projections_) {
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
        (*handler)(e.payload, view);
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

projector::projector(store& db, const upcasters* rewrites)
    : db_(db), rewrites_(rewrites), source_(std::make_unique<inline_source>(*this)) {
  db_.migrate("cleave.projector", checkpoint_schema);
}

projector::~projector() {
  stop();
}

void projector::add(projection p) {
  if (std::any_of(projections_.begin(), projections_.end(),
                  [&](const projection& q) { return q.name() == p.name(); }))
    throw std::logic_error(fmt::format("a projection named '{}' is already registered", p.name()));
  if (!p.schema_sql().empty()) {
    const std::string sql = replace_view(p.schema_sql(), p.table());
    const migration view[] = {{1, "view", sql}};
    db_.migrate("projection:" + p.name(), view);
  }
  auto& tx = db_.begin_write({});
  try {
    const sql_value name[] = {std::string_view(p.name())};
    tx.exec(
        "insert into cleave_checkpoints(name, transaction_id, position) values ($1, 0, 0) "
        "on conflict(name) do nothing",
        name);
  } catch (...) {
    tx.rollback();
    throw;
  }
  tx.commit();
  projections_.push_back(std::move(p));
}

session_source& projector::source() noexcept {
  return *source_;
}

position_token projector::checkpoint(std::string_view name) {
  auto& tx = db_.begin_read({});
  position_token out;
  try {
    const sql_value key[] = {name};
    tx.query("select transaction_id, position from cleave_checkpoints where name = $1", key,
             [&](const row_view& row) {
               out = position_token(static_cast<std::uint64_t>(std::get<std::int64_t>(row.get(0))),
                                    static_cast<std::uint64_t>(std::get<std::int64_t>(row.get(1))));
             });
  } catch (...) {
    tx.finish();
    throw;
  }
  tx.finish();
  return out;
}

std::size_t projector::catch_up_one(const projection& p, std::size_t batch) {
  const auto from = checkpoint(p.name());
  auto events = db_.read_events(from, batch);
  if (events.empty()) return 0;
  auto& tx = db_.begin_write({});
  try {
    for (auto& e : events) {
      if (rewrites_) rewrites_->apply(e.type, e.payload);
      const auto* handler = p.handler_for(e.type);
      if (!handler) continue;
      tx.exec("savepoint cleave_event", {});
      try {
        view_context view(tx, p.table(), e);
        (*handler)(e.payload, view);
        tx.exec("release savepoint cleave_event", {});
      } catch (const std::exception& failure) {
        tx.exec("rollback to savepoint cleave_event", {});
        tx.exec("release savepoint cleave_event", {});
        const std::string key = p.name() + "@" + e.position.to_string();
        {
          std::lock_guard lock(failures_mutex_);
          if (++failures_[key] < max_attempts_) throw;  // the whole batch is tried again later
          failures_.erase(key);
        }
        // Tried enough: park it and go on, so one bad event does not stop the projection.
        const std::string payload = e.payload.dump();
        const std::string why = failure.what();
        const sql_value row[] = {std::string_view(p.name()),
                                 static_cast<std::int64_t>(e.position.transaction()),
                                 static_cast<std::int64_t>(e.position.position()),
                                 std::string_view(e.type),
                                 std::string_view(payload),
                                 std::string_view(why)};
        tx.exec(
            "insert into cleave_dead_letters(projection, transaction_id, position, type, payload, "
            "error) values ($1, $2, $3, $4, $5, $6)",
            row);
        spdlog::warn("projection {}: parked {} at {}: {}", p.name(), e.type, e.position.to_string(),
                     why);
      }
    }
    const auto to = events.back().position;
    const sql_value cas[] = {
        std::string_view(p.name()), static_cast<std::int64_t>(to.transaction()),
        static_cast<std::int64_t>(to.position()), static_cast<std::int64_t>(from.transaction()),
        static_cast<std::int64_t>(from.position())};
    if (tx.exec("update cleave_checkpoints set transaction_id = $2, position = $3 "
                "where name = $1 and transaction_id = $4 and position = $5",
                cas) == 0) {
      tx.rollback();  // another projector moved it first: its batch stands, this one does not
      return 0;
    }
  } catch (...) {
    tx.rollback();
    throw;
  }
  tx.commit();
  { std::lock_guard lock(progress_mutex_); }
  progress_.notify_all();
  return events.size();
}

const projection& projector::find(std::string_view name) const {
  for (const auto& q : projections_)
    if (q.name() == name) return q;
  throw error_exception({errc::not_found, fmt::format("no projection named '{}'", name), {}});
}

std::vector<projector::dead_letter> projector::dead_letters(std::string_view name) {
  auto& tx = db_.begin_read({});
  std::vector<parked_row> rows;
  try {
    read_context ctx(&tx, detail::no_meta);
    rows = ctx.many<parked_row>(
        "select transaction_id, position, type, payload, error from cleave_dead_letters "
        "where projection = $1 order by transaction_id, position",
        name);
  } catch (...) {
    tx.finish();
    throw;
  }
  tx.finish();
  std::vector<dead_letter> out;
  for (auto& r : rows) {
    auto payload = parse_json(r.payload);
    out.push_back({position_token(static_cast<std::uint64_t>(r.transaction_id),
                                  static_cast<std::uint64_t>(r.position)),
                   std::move(r.type), payload ? std::move(*payload) : json(nullptr),
                   std::move(r.error)});
  }
  return out;
}

std::size_t projector::replay_dead_letters(std::string_view name) {
  const auto& p = find(name);
  std::size_t replayed = 0;
  for (const auto& letter : dead_letters(name)) {
    auto& tx = db_.begin_write({});
    try {
      stored_event e;
      e.position = letter.position;
      e.type = letter.type;
      e.payload = letter.payload;
      if (const auto* handler = p.handler_for(e.type)) {
        view_context view(tx, p.table(), e);
        (*handler)(e.payload, view);
      }
      const sql_value key[] = {name, static_cast<std::int64_t>(e.position.transaction()),
                               static_cast<std::int64_t>(e.position.position())};
      tx.exec(
          "delete from cleave_dead_letters where projection = $1 and transaction_id = $2 and "
          "position = $3",
          key);
    } catch (const std::exception& failure) {
      tx.rollback();  // still failing: it stays parked
      spdlog::warn("projection {}: replay of {} failed again: {}", name, letter.type,
                   failure.what());
      continue;
    }
    tx.commit();
    ++replayed;
  }
  return replayed;
}

position_token projector::wait_for(std::string_view name, position_token token,
                                   clock::time_point deadline) {
  const auto* p = [&]() -> const projection* {
    for (const auto& q : projections_)
      if (q.name() == name) return &q;
    return nullptr;
  }();
  if (!p)
    throw error_exception({errc::internal, fmt::format("no projection named '{}'", name), {}});
  if (p->mode() == projection_mode::inline_) return token;
  for (;;) {
    // Checked under the lock the worker notifies under, so no wake-up is lost.
    std::unique_lock lock(progress_mutex_);
    const auto at = checkpoint(name);
    if (!(at < token)) return at;
    if (clock::now() >= deadline) return at;
    notify();  // the worker may be asleep while events are waiting
    progress_.wait_until(lock, std::min(deadline, clock::now() + std::chrono::milliseconds(200)));
  }
}

std::size_t projector::catch_up(std::size_t batch) {
  std::size_t applied = 0;
  for (const auto& p : projections_) {
    if (p.mode() != projection_mode::async) continue;
    while (const auto n = catch_up_one(p, batch)) applied += n;
  }
  return applied;
}

void projector::notify() {
  {
    std::lock_guard lock(wake_mutex_);
    woken_ = true;
  }
  wake_.notify_one();
}

void projector::start(std::chrono::milliseconds poll) {
  if (running_.exchange(true)) return;
  worker_ = std::thread([this, poll] {
    while (running_) {
      std::size_t applied = 0;
      try {
        applied = catch_up();
      } catch (const error_exception& e) {
        spdlog::error("projector: {}", e.error().describe());
      } catch (const std::exception& e) {
        spdlog::error("projector: {}", e.what());
      }
      if (applied > 0) continue;
      std::unique_lock lock(wake_mutex_);
      wake_.wait_for(lock, poll, [&] { return woken_ || !running_; });
      woken_ = false;
    }
  });
}

void projector::stop() {
  if (!running_.exchange(false)) return;
  notify();
  worker_.join();
}

}  // namespace cleave
