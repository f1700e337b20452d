// The SQLite store: opening the database (its folder, WAL mode, durability, cleave's own
// migrations), and lending out its single writer, under a lock, and its read-only readers.

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <utility>

#include <cleave/core/detail/schedules.hpp>
#include <cleave/store/detail/append.hpp>
#include <cleave/store/detail/failure.hpp>

#include <spdlog/spdlog.h>

#include "store_impl.hpp"

namespace cleave::sqlite {

namespace {

using detail::connection;

constexpr migration own_migrations[] = {
    {1, "event log",
     "create table cleave_events("
     "  position integer primary key autoincrement,"
     "  stream text not null,"
     "  stream_version integer not null,"
     "  type text not null,"
     "  payload text not null,"
     "  command_id text,"
     "  correlation_id text,"
     "  recorded_at integer not null default (cast((julianday('now') - 2440587.5) * 86400000 as "
     "integer)));"
     "create unique index cleave_events_stream on cleave_events(stream, stream_version)"
     "  where stream <> '';"},
    {2, "command outcomes",
     "create table cleave_commands("
     "  command_id text primary key,"
     "  command_type text not null,"
     "  outcome text not null,"
     "  position integer not null,"
     "  recorded_at integer not null default (cast((julianday('now') - 2440587.5) * 86400000 as "
     "integer)));"
     "create index cleave_commands_age on cleave_commands(recorded_at);"},
    {3, "snapshots", cleave::detail::snapshots_schema},
    {4, "snapshot shapes", cleave::detail::snapshot_shapes_schema},
    {5, "scheduled commands", cleave::detail::schedules_schema},
};

}  // namespace

store::impl::impl(const options& o) : opts(o), memory(o.path == ":memory:" || o.path.empty()) {
  if (!memory) {
    auto folder = std::filesystem::path(o.path).parent_path();
    if (!folder.empty()) std::filesystem::create_directories(folder);
  }
  write_conn = std::make_unique<connection>(
      memory ? ":memory:" : o.path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, o.busy_timeout);
  if (!memory) write_conn->script("pragma journal_mode = wal");
  write_conn->script(o.sync == durability::full ? "pragma synchronous = full"
                                                : "pragma synchronous = normal");
  write_conn->script("pragma foreign_keys = on");
  if (!memory) {
    try {
      checkpoints = std::make_unique<detail::checkpointer>(
          o.path, write_conn->handle(),
          detail::checkpointer::writer_lock{
              [this](clock::time_point until) { return write_mutex.try_lock_first_until(until); },
              [this] { write_mutex.unlock(); }},
          detail::checkpointer::limits{});
    } catch (const std::exception& e) {
      // SQLite's own checkpoints, in the commits, stay on.
      spdlog::warn("sqlite: WAL checkpoints stay in the commits ({})", e.what());
    }
  }
  write_tx.owner = this;
}

// The single writer: this process's lock, then the file's (another process may hold it), each
// waited for until the request's deadline at the most (errc::timeout).
write_transaction& store::impl::begin_write(const request_meta& meta) {
  const bool bounded = meta.deadline != clock::time_point::max();
  constexpr std::string_view waiting = "while it waited for the database's single writer";
  if (!bounded)
    write_mutex.lock();
  else if (!write_mutex.try_lock_until(meta.deadline))
    cleave::detail::throw_deadline_passed(waiting);
  auto busy_wait = opts.busy_timeout;
  bool deadline_first = false;
  if (bounded) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(meta.deadline - clock::now());
    deadline_first = left < busy_wait;
    busy_wait = std::max(std::chrono::milliseconds(1), std::min(left, busy_wait));
    sqlite3_busy_timeout(write_conn->handle(), static_cast<int>(busy_wait.count()));
  }
  const auto restore = [&] {
    if (bounded)
      sqlite3_busy_timeout(write_conn->handle(), static_cast<int>(opts.busy_timeout.count()));
  };
  try {
    write_conn->exec("begin immediate", {});
  } catch (const error_exception& e) {
    restore();
    write_mutex.unlock();
    if (deadline_first && e.error().category == errc::unavailable)
      cleave::detail::throw_deadline_passed(waiting);
    throw;
  } catch (...) {
    restore();
    write_mutex.unlock();
    throw;
  }
  restore();
  write_tx.rebind(meta);
  write_tx.last_position = 0;
  return write_tx;
}

read_transaction& store::impl::begin_read() {
  reader* r = nullptr;
  if (memory) {
    write_mutex.lock();  // one connection: reads wait for the writer, under query_only
    memory_reader.owner = this;
    memory_reader.conn = write_conn.get();
    r = &memory_reader;
    try {
      write_conn->script("pragma query_only = 1");
    } catch (...) {
      write_mutex.unlock();
      throw;
    }
  } else {
    std::lock_guard lock(readers_mutex);
    if (free_readers.empty()) {
      auto fresh = std::make_unique<reader>();
      fresh->owner = this;
      fresh->own = std::make_unique<connection>(opts.path, SQLITE_OPEN_READONLY, opts.busy_timeout);
      fresh->own->script("pragma query_only = 1");
      // Pages through a memory map rather than a read() each: catching up a projection reads
      // the log at several times the speed.
      fresh->own->script("pragma mmap_size = 268435456");
      fresh->conn = fresh->own.get();
      free_readers.push_back(fresh.get());
      readers.push_back(std::move(fresh));
    }
    r = free_readers.back();
    free_readers.pop_back();
  }
  try {
    r->conn->exec("begin", {});
  } catch (...) {
    give_back(r);
    throw;
  }
  return *r;
}

void store::impl::give_back(reader* r) noexcept {
  if (r == &memory_reader) {
    try {
      write_conn->script("pragma query_only = 0");
    } catch (...) {
      // Unreachable in practice: the pragma cannot fail on an open connection.
    }
    write_mutex.unlock();
    return;
  }
  std::lock_guard lock(readers_mutex);
  free_readers.push_back(r);
}

store::store(options opts) : options_(std::move(opts)), impl_(std::make_unique<impl>(options_)) {
  migrate("cleave", own_migrations);
  // The migrations' transactions have opened the WAL and its index; the writer's connection
  // keeps them open, in WAL mode and normal locking (an exclusive one keeps the index in the
  // heap, where no other connection sees it), as long as the store lives.
  if (!impl_->memory) {
    auto pragma = [&](std::string_view sql) {
      auto& s = impl_->write_conn->prepare(sql);
      std::string value = s.step() ? std::string(s.text_at(0)) : std::string();
      s.reset();
      return value;
    };
    if (pragma("pragma journal_mode") == "wal" && pragma("pragma locking_mode") == "normal")
      impl_->wal_index = detail::wal_index_header::of(impl_->write_conn->handle());
  }
}

std::optional<data_version> store::current_data_version() const noexcept {
  return impl_->wal_index ? impl_->wal_index->read() : std::nullopt;
}

store::~store() = default;

bool store::local_reads() const noexcept {
  return !impl_->memory;
}

// One writer at a time: every level is serializable here.
write_transaction& store::begin_write(const request_meta& meta, isolation) {
  return impl_->begin_write(meta);
}

read_transaction& store::begin_read(const request_meta&, const consistency&) {
  return impl_->begin_read();
}

}  // namespace cleave::sqlite
