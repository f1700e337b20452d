// The PostgreSQL store: opening it (a first connection, cleave's own migrations, the replicas),
// its pool of connections lent out as write and read-only transactions, and closing it.

#include <algorithm>
#include <climits>
#include <utility>

#include <fmt/format.h>

#include <cleave/core/detail/schedules.hpp>
#include <cleave/store/detail/append.hpp>

#include "store_impl.hpp"

namespace cleave::postgres {

namespace {

using detail::connection;

constexpr migration own_migrations[] = {
    {1, "event log",
     "create table cleave_events("
     "  position bigint generated always as identity primary key,"
     "  transaction_id xid8 not null default pg_current_xact_id(),"
     "  stream text not null,"
     "  stream_version bigint not null,"
     "  type text not null,"
     "  payload jsonb not null,"
     "  command_id text,"
     "  correlation_id text,"
     "  recorded_at timestamptz not null default now());"
     "create unique index cleave_events_stream on cleave_events(stream, stream_version)"
     "  where stream <> '';"
     "create index cleave_events_order on cleave_events(transaction_id, position);"},
    {2, "command outcomes",
     "create table cleave_commands("
     "  command_id text primary key,"
     "  command_type text not null,"
     "  outcome jsonb not null,"
     "  transaction_id xid8 not null,"
     "  position bigint not null,"
     "  lsn pg_lsn,"
     "  recorded_at timestamptz not null default now());"
     "create index cleave_commands_age on cleave_commands(recorded_at);"},
    {3, "snapshots", cleave::detail::snapshots_schema},
    {4, "snapshot shapes", cleave::detail::snapshot_shapes_schema},
    {5, "scheduled commands", cleave::detail::schedules_schema},
    // The version of an event appended to a stream, computed in the insert that appends it (one
    // statement, no read before it): the stream's current version + 1, and a conflict (SQLSTATE
    // CLV01) when the caller expected another current version.
    {6, "stream versions in the append",
     "create function cleave_next_version(p_stream text, p_expected bigint) returns bigint "
     "language plpgsql as $$ "
     "declare v_current bigint; "
     "begin "
     "  if p_stream = '' then return 0; end if; "
     "  select coalesce(max(stream_version), 0) into v_current from cleave_events "
     "    where stream = p_stream and stream <> ''; "
     "  if p_expected is not null and v_current <> p_expected then "
     "    raise exception using errcode = 'CLV01', message = format("
     "      'stream ''%s'' is at version %s, expected %s', p_stream, v_current, p_expected); "
     "  end if; "
     "  return v_current + 1; "
     "end $$"},
};

}  // namespace

store::impl::impl(const options& o) : opts(o) {
  // Connect one up front, so a wrong URL fails here and not at the first command.
  auto first = std::make_unique<session>();
  first->owner = this;
  first->conn = std::make_unique<connection>(opts.url);
  free.push_back(first.get());
  all.push_back(std::move(first));
}

namespace {

using cleave::detail::throw_deadline_passed;

}  // namespace

clock::time_point grace_after(clock::time_point deadline) {
  constexpr auto grace = std::chrono::milliseconds(100);
  return deadline >= clock::time_point::max() - grace ? clock::time_point::max() : deadline + grace;
}

store::impl::session& store::impl::acquire(const request_meta& meta, std::string_view begin,
                                           purpose p, bool own_work) {
  auto now = clock::now();
  const bool bounded = meta.deadline != clock::time_point::max();
  if (bounded && meta.deadline <= now) throw_deadline_passed("before it reached the database");
  session* s = nullptr;
  {
    std::unique_lock lock(mutex);
    // A request (it has a deadline) leaves the last connection to the process's own work —
    // health, the projector, the replica monitor — so that requests stuck in the database
    // cannot starve those.
    const std::size_t keep = bounded && !own_work && opts.pool_size > 1 ? 1 : 0;
    const auto usable = [&] {
      if (free.size() <= keep && all.size() < opts.pool_size) {
        auto fresh = std::make_unique<session>();
        fresh->owner = this;
        free.push_back(fresh.get());
        all.push_back(std::move(fresh));
      }
      return free.size() > keep;
    };
    const auto until = std::min(now + opts.pool_timeout, meta.deadline);
    if (!available.wait_until(lock, until, usable)) {
      if (until == meta.deadline)
        throw_deadline_passed("while it waited for a database connection");
      throw error_exception(
          {errc::unavailable,
           fmt::format("no PostgreSQL connection was free within {} ms", opts.pool_timeout.count()),
           {}});
    }
    s = free.back();
    free.pop_back();
  }
  try {
    if (!s->conn || s->conn->closed_by_server()) {
      s->conn.reset();
      s->conn = std::make_unique<connection>(opts.url);
    }
    // The server's own timeouts (set below) bound each statement by the time left when the
    // transaction began; the guard ends the wait for an answer soon after the deadline itself
    // (a later statement, a server that stopped answering), breaking the connection, which
    // rolls the transaction back. A standby's statements are bounded by replica_timeout too.
    s->conn->guard_until(grace_after(meta.deadline));
    s->conn->answer_within(replica_up ? std::optional(opts.replica_timeout) : std::nullopt);
    s->conn->set_writing(p == purpose::write);
    s->conn->forget_rows();  // (the counts of another transaction's queued statements)
    // A write transaction's BEGIN is queued, and travels with its first statement; a read's is
    // sent now, so that a replica that cannot answer is found here.
    const auto begin_with = [&](std::string_view sql) {
      if (p == purpose::write) return s->conn->defer_plain(sql, /*keep=*/true);
      s->conn->script(sql);
      return std::uint64_t{0};
    };
    s->begin_ticket = begin_with(begin);
    if (bounded) {
      now = clock::now();
      const auto left = std::clamp<std::int64_t>(
          std::chrono::ceil<std::chrono::milliseconds>(meta.deadline - now).count(), 1, INT_MAX);
      begin_with(fmt::format("set local statement_timeout = {}", left));
      begin_with(fmt::format("set local lock_timeout = {}", left));
    }
  } catch (...) {
    // A standby that cannot be reached, or stops answering, is set aside; one that was merely
    // given too little time is not.
    if (replica_up && (!s->conn || s->conn->stalled())) *replica_up = false;
    // A connection left inside a failed transaction block is not lent out again.
    if (s->conn && s->conn->healthy()) s->conn.reset();
    give_back(s);
    throw;
  }
  s->rebind(meta);
  s->transaction_id = 0;
  s->last_position = 0;
  s->appended = false;
  s->unsent.clear();
  s->stream_versions.clear();
  s->inserts.clear();
  s->insert_positions.clear();
  s->savepoints.clear();
  s->conn->forget_failure();
  return *s;
}

void store::impl::give_back(session* s) noexcept {
  if (s->conn && !s->conn->healthy()) {
    if (replica_up && s->conn->stalled()) *replica_up = false;
    s->conn.reset();
  }
  {
    std::lock_guard lock(mutex);
    free.push_back(s);
  }
  available.notify_all();  // waiters differ in how many they leave
}

store::impl::~impl() {
  stop_replicas();
  {
    std::lock_guard lock(notify_mutex);
    notify_stopping = true;
  }
  notify_wake.notify_one();
  if (notifier.joinable()) notifier.join();
}

store::store(options opts) : options_(std::move(opts)), impl_(std::make_unique<impl>(options_)) {
  migrate("cleave", own_migrations);
  impl_->start_replicas();
}

store::~store() = default;

write_transaction& store::begin_write(const request_meta& meta, isolation level) {
  return impl_->acquire(meta,
                        level == isolation::serializable ? "begin isolation level serializable"
                                                         : "begin isolation level read committed",
                        impl::purpose::write, false);
}

// Repeatable read: every statement of a read sees one snapshot, as on SQLite (a query that
// reads twice sees no commit in between, and head_in() names what it saw). Read only, it takes
// no transaction id and cannot fail to serialize. On a standby the snapshot is held between the
// statements too, so a recovery conflict there may end the connection (the read then fails as
// unavailable); queries are short.
read_transaction& store::begin_read(const request_meta& meta, const consistency& wanted) {
  constexpr std::string_view begin = "begin transaction isolation level repeatable read read only";
  if (auto* r = impl_->route(meta, wanted)) {
    ++r->reads;
    return r->pool->acquire(meta, begin, impl::purpose::read, false);
  }
  return impl_->acquire(meta, begin, impl::purpose::read, false);
}

}  // namespace cleave::postgres
