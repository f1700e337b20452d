#pragma once
// Projections: views built for reading, kept current from the event log.
//
//   cleave::projection cards{"customer_card"};
//   cards.schema("create table {view}(id text primary key, name text not null, orders bigint not
//   null)")
//        .on([](const customer_registered& e, cleave::view_context& v) {
//          v.exec("insert into {view}(id, name, orders) values ($1, $2, 0)", e.id, e.name);
//        })
//        .async();                          // or .inline_(): in the command's own transaction
//
// A projection names its table `{view}`, so a rebuild can point it at a shadow copy.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <cleave/core/context.hpp>
#include <cleave/core/detail/bus_core.hpp>
#include <cleave/core/detail/handler_traits.hpp>
#include <cleave/core/json.hpp>
#include <cleave/read/detail/event_handler.hpp>
#include <cleave/store/store.hpp>

namespace cleave {

// inline_: in the command's transaction; async: after commit, in batches; memory: an in-memory
// view (cleave::memory_view), async in this process; materialized: a database materialized view
// over the write tables, refreshed by the projector.
enum class projection_mode { inline_, async, memory, materialized };

// When a materialized view is refreshed: after this many events, or this long after the first
// event it has not seen — whichever comes first — and at once when a read waits for it.
struct refresh_policy {
  std::uint64_t after_events = 100;
  std::chrono::milliseconds after{500};
};

// `sql` with every `{view}` replaced by `table`: the statement a projection's SQL runs as.
std::string expand_view(std::string_view sql, std::string_view table);

// What a projection handler gets: SQL on its view (`{view}` stands for the table) in the
// transaction that applies the event, and the event as stored.
class view_context {
 public:
  // `queue`: statements may be queued (write_session::defer) — an async batch's first pass,
  // whose failure is found again event by event.
  view_context(write_session& tx, std::string_view table, const stored_event& stored,
               bool queue = false) noexcept
      : tx_(tx), table_(table), stored_(stored), queue_(queue) {}

  // Runs a statement on the view; a failure throws (error_exception), here or — for a queued
  // statement — at the next statement that waits for an answer.
  template <class... Args>
  rows_changed exec(std::string_view sql, const Args&... args) {
    const std::array<sql_value, sizeof...(Args)> params{detail::to_sql(args)...};
    return exec_params(sql, params);
  }
  // The same with the parameters in a span: for statements built at run time, such as one
  // multi-row insert for a whole fold (`values ($1, $2), ($3, $4), …`).
  rows_changed exec_params(std::string_view sql, std::span<const sql_value> params) {
    if (queue_) return {tx_, tx_.defer(with_table(sql), params)};
    return {tx_, {tx_.exec(with_table(sql), params), 0}};
  }
  template <class T, class... Args>
  result<T> one(std::string_view sql, const Args&... args) {
    return reader().template one<T>(with_table(sql), args...);
  }
  template <class T, class... Args>
  std::vector<T> many(std::string_view sql, const Args&... args) {
    return reader().template many<T>(with_table(sql), args...);
  }
  // The event being applied: its position, stream, metadata.
  const stored_event& event() const noexcept { return stored_; }
  std::string_view table() const noexcept { return table_; }
  // The transaction the event is applied in, for parts of the framework built on projections
  // (process managers).
  write_session& session() const noexcept { return tx_; }

 private:
  std::string with_table(std::string_view sql) const;
  read_context reader() const { return read_context(&tx_, detail::no_meta); }

  write_session& tx_;
  std::string_view table_;
  const stored_event& stored_;
  bool queue_ = false;
};

class projection {
 public:
  using apply_fn = std::function<void(const event_payload& payload, view_context& view)>;
  // Folds the events of one type in a batch (stored events, in log order) into the view at once.
  using fold_fn =
      std::function<void(std::span<const stored_event* const> events, view_context& view)>;

  // `name` identifies the projection (its checkpoint, its table `name` by default).
  explicit projection(std::string name) : name_(name), table_(std::move(name)) {}

  // The view's schema: statements that create it, with `{view}` for its table.
  projection& schema(std::string create_sql) {
    schema_ = std::move(create_sql);
    return *this;
  }

  // The projection's version (1 unless declared). What a view is built by — this number, its
  // schema, its batch_sql (or a materialized view's select) — is recorded with it; when an
  // application starts with any of them changed, the projector builds the new version beside the
  // live view (blue/green) and swaps it in. Raise the number when only the handlers change.
  projection& version(std::uint32_t v) {
    version_ = v;
    return *this;
  }
  std::uint32_t declared_version() const noexcept { return version_; }
  // The recorded identity of what builds the view: "<version>:<hash of its SQL>".
  std::string version_key() const;

  // Handles one event type: `void(const E&, cleave::view_context&)`, E a CLEAVE_EVENT.
  template <class F>
  projection& on(F&& handler) {
    detail::add_event_handler<view_context>(handlers_, std::forward<F>(handler));
    return *this;
  }

  // Folds a whole batch at once: `void(const std::vector<E>& events, cleave::view_context&)`,
  // called once per async batch with that batch's events of type E (in log order), so that a
  // view can, say, sum counts per key in memory and write each key once. Use folds or per-event
  // handlers in one projection, not both. A fold that throws fails its whole batch (no event
  // can be parked alone): the batch is retried until it succeeds. Async only.
  template <class F>
  projection& fold(F&& f) {
    using H = std::decay_t<F>;
    using E =
        typename fold_element<std::remove_cvref_t<typename detail::message_param<H>::type>>::type;
    static_assert(event<E>,
                  "a fold takes (const std::vector<Event>&, cleave::view_context&) with the event "
                  "declared by CLEAVE_EVENT");
    if constexpr (event<E>) add_fold<E>(std::forward<F>(f));
    return *this;
  }

 private:
  // The event type of a fold's first parameter, std::vector<E>; void for anything else.
  template <class V>
  struct fold_element {
    using type = void;
  };
  template <class E, class A>
  struct fold_element<std::vector<E, A>> {
    using type = E;
  };
  template <class E, class F>
  void add_fold(F&& f) {
    using H = std::decay_t<F>;
    folds_[std::string(info_of<E>().wire_name)] = [h = H(std::forward<F>(f))](
                                                      std::span<const stored_event* const> events,
                                                      view_context& view) mutable {
      std::vector<E> decoded;
      decoded.reserve(events.size());
      for (const auto* stored : events) {
        auto e = stored->payload.template decode<E>(decode_mode::tolerant);
        if (!e) throw error_exception(e.error());
        decoded.push_back(std::move(*e));
      }
      h(decoded, view);
    };
  }

 public:
  // Set-based instead of handlers: one SQL statement applies a whole batch, `{events}` standing
  // for the batch's rows of the log as a subquery named `events` (columns position, stream,
  // stream_version, type, payload, …; `payload->>'field'` reads a member on both backends;
  // `recorded_at_ms` is when the event was recorded, in Unix milliseconds on both, where
  // `recorded_at` is the backend's own type) and
  // `{view}` for the table, e.g.
  //   insert into {view}(stream, n) select stream, count(*) from {events} group by stream
  //   on conflict(stream) do update set n = {view}.n + excluded.n
  // Async, with its view in the write database (it reads the log there).
  projection& batch_sql(std::string sql) {
    batch_sql_ = std::move(sql);
    return *this;
  }
  const std::string& batch_sql_text() const noexcept { return batch_sql_; }

  // A database-native materialized view instead of handlers: `select_sql` (over the write
  // tables) defines it; `key` names the column(s) that identify a row (PostgreSQL needs a unique
  // index to refresh CONCURRENTLY, without blocking readers). On PostgreSQL a MATERIALIZED VIEW;
  // on SQLite a table rebuilt in one transaction. The projector refreshes it per `policy` and
  // records the log position each refresh reflects, so consistency requests can be answered.
  projection& materialized(std::string select_sql, std::string key, refresh_policy policy = {}) {
    select_ = std::move(select_sql);
    key_ = std::move(key);
    refresh_ = policy;
    mode_ = projection_mode::materialized;
    return *this;
  }
  const std::string& select_sql() const noexcept { return select_; }
  const std::string& key_columns() const noexcept { return key_; }
  const refresh_policy& refresh() const noexcept { return refresh_; }

  // Applied in the command's own transaction: the view is never behind, and lives in the write
  // database.
  projection& inline_() {
    mode_ = projection_mode::inline_;
    return *this;
  }
  // Applied after commit, in batches, by the projector (the default).
  projection& async() {
    mode_ = projection_mode::async;
    return *this;
  }

  // Its handlers have effects beyond its view (a process manager's commands): running them again
  // from the start would repeat those effects, so it is never rebuilt, nor built afresh for a new
  // version; `why` is what a refused rebuild says.
  projection& not_rebuildable(std::string why) {
    not_rebuildable_ = std::move(why);
    return *this;
  }
  // Why it cannot be rebuilt; empty when it can.
  const std::string& not_rebuildable_reason() const noexcept { return not_rebuildable_; }
  // Registered for the first time, it starts at the log's head instead of its beginning: it
  // handles the events committed from then on (a process manager added to a running system
  // reacts to what happens next, not to history). Async only; a rebuild starts at the beginning.
  projection& from_now_on(bool on = true) {
    from_head_ = on;
    return *this;
  }
  bool starts_at_head() const noexcept { return from_head_; }

  // The group of async projections whose worker runs it (default: the main group, ""). Each group
  // has a lease of its own (the projector's lease name, then "." and the group), so one process
  // can run one group alone (`project --group NAME`) while another runs the rest.
  projection& group(std::string name) {
    group_ = std::move(name);
    return *this;
  }
  const std::string& group_name() const noexcept { return group_; }

  // Splits the projection into `n` units of work, each owning the streams whose stable hash
  // falls in its slice (a stream's events stay in order inside one unit; an event of no stream
  // belongs to unit 0's slice like any other stream's hash). Each unit has its own checkpoint
  // (`<name>#<i>/<n>` in cleave_checkpoints), its own dead letters, and — on a database with
  // many writers — its own lease, so projector processes share the units. `n` is part of the
  // view's version: changing it rebuilds the view beside the live one and swaps it in, never
  // re-slices it in place. Async projections with handlers or folds only; 1 (the default) is
  // one unit named as the projection.
  projection& partitions(std::uint32_t n) {
    partitions_ = n == 0 ? 1 : n;
    return *this;
  }
  std::uint32_t partition_count() const noexcept { return partitions_; }

  // Hands each batch to `sink` (the events of `types`, or of every type when empty, in log
  // order) for effects outside the database (a relay to a broker); the checkpoint moves after it
  // returns, in a transaction of its own (no database transaction is open while it runs). A sink
  // that throws fails the batch, which is tried again from the same checkpoint: it must tolerate
  // seeing events again. Async only; not with handlers, folds or batch_sql.
  using sink_fn = std::function<void(std::span<const stored_event> events)>;
  projection& sink(sink_fn sink, std::vector<std::string> types = {}) {
    sink_ = std::move(sink);
    sink_types_ = std::move(types);
    return *this;
  }
  const sink_fn& sink_handler() const noexcept { return sink_; }
  const std::vector<std::string>& sink_types() const noexcept { return sink_types_; }

  const std::string& name() const noexcept { return name_; }
  const std::string& table() const noexcept { return table_; }
  const std::string& schema_sql() const noexcept { return schema_; }
  projection_mode mode() const noexcept { return mode_; }
  // The handler for a stored type name, or null when this projection ignores it.
  const apply_fn* handler_for(std::string_view type) const {
    auto it = handlers_.find(type);
    return it == handlers_.end() ? nullptr : &it->second;
  }
  const std::map<std::string, fold_fn, std::less<>>& folds() const noexcept { return folds_; }
  // The stored type names it has a handler or a fold for.
  std::vector<std::string> event_types() const {
    std::vector<std::string> out;
    out.reserve(handlers_.size() + folds_.size());
    for (const auto& [type, handler] : handlers_) out.push_back(type);
    for (const auto& [type, fold] : folds_)
      if (!handlers_.contains(type)) out.push_back(type);
    out.insert(out.end(), sink_types_.begin(), sink_types_.end());
    return out;
  }

 private:
  std::string name_, table_, schema_, select_, key_, batch_sql_, not_rebuildable_, group_;
  sink_fn sink_;
  std::vector<std::string> sink_types_;
  refresh_policy refresh_;
  projection_mode mode_ = projection_mode::async;
  std::uint32_t version_ = 1;
  std::uint32_t partitions_ = 1;
  bool from_head_ = false;
  std::map<std::string, apply_fn, std::less<>> handlers_;
  std::map<std::string, fold_fn, std::less<>> folds_;
};

}  // namespace cleave
