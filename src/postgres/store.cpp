// The PostgreSQL store: opening it (a first connection, cleave's own migrations, the replicas),
// its pool of connections lent out as write and read-only transactions, and closing it.

#include <utility>

#include <fmt/format.h>

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

store::impl::session& store::impl::acquire(const request_meta& meta, std::string_view begin) {
  session* s = nullptr;
  {
    std::unique_lock lock(mutex);
    if (free.empty() && all.size() < opts.pool_size) {
      auto fresh = std::make_unique<session>();
      fresh->owner = this;
      free.push_back(fresh.get());
      all.push_back(std::move(fresh));
    }
    if (!available.wait_for(lock, opts.pool_timeout, [&] { return !free.empty(); }))
      throw error_exception(
          {errc::unavailable,
           fmt::format("no PostgreSQL connection was free within {} ms", opts.pool_timeout.count()),
           {}});
    s = free.back();
    free.pop_back();
  }
  try {
    if (!s->conn || !s->conn->healthy()) s->conn = std::make_unique<connection>(opts.url);
    s->conn->script(begin);
  } catch (...) {
    give_back(s);
    throw;
  }
  s->rebind(meta);
  s->transaction_id = 0;
  s->last_position = 0;
  return *s;
}

void store::impl::give_back(session* s) noexcept {
  if (s->conn && !s->conn->healthy()) s->conn.reset();
  {
    std::lock_guard lock(mutex);
    free.push_back(s);
  }
  available.notify_one();
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
  return impl_->acquire(meta, level == isolation::serializable
                                  ? "begin isolation level serializable"
                                  : "begin isolation level read committed");
}

read_transaction& store::begin_read(const request_meta& meta, const consistency& wanted) {
  if (auto* r = impl_->route(meta, wanted)) {
    ++r->reads;
    return r->pool->acquire(meta, "begin transaction read only");
  }
  return impl_->acquire(meta, "begin transaction read only");
}

}  // namespace cleave::postgres
