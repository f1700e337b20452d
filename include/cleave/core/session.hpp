#pragma once
// The abstract storage session under the handler contexts. `core` only declares it; the `store`
// module and the backends implement it.

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <cleave/core/function_ref.hpp>
#include <cleave/core/json.hpp>
#include <cleave/core/position.hpp>

namespace cleave {

// Who is asking: the authenticated subject and its roles. Empty for an anonymous caller.
struct principal {
  std::string subject;
  std::vector<std::string> roles;

  bool has_role(std::string_view role) const {
    for (const auto& r : roles)
      if (r == role) return true;
    return false;
  }
};

using clock = std::chrono::steady_clock;

// What travels with every command and query besides the message itself.
// How fresh a query's answer must be. `eventual` (the default) reads whatever the views hold;
// `at_least(token)` waits until the views a query reads have reached the token a command
// returned (read-your-writes); `bounded(max)` waits until they are at most `max` behind the log;
// `strong` waits until they hold every command committed before the query (and reads the primary,
// never a replica). Waits end at the request's deadline, with errc::unavailable.
// A view with parked events (dead letters) that the read would have to include is not current,
// however far its checkpoint has got: every level but `eventual` answers errc::unavailable naming
// the view, unless the caller accepts them (`strong().accepting_dead_letters()`).
struct consistency {
  enum class level { eventual, at_least, bounded, strong };
  level required = level::eventual;
  position_token token;                        // at_least
  std::chrono::milliseconds max_staleness{0};  // bounded
  bool accepts_dead_letters = false;           // answer from views missing parked events
  consistency accepting_dead_letters() const noexcept {
    auto out = *this;
    out.accepts_dead_letters = true;
    return out;
  }
};
inline consistency eventual() noexcept {
  return {};
}
inline consistency at_least(position_token token) noexcept {
  return {consistency::level::at_least, token, {}, false};
}
inline consistency bounded(std::chrono::milliseconds max_staleness) noexcept {
  return {consistency::level::bounded, {}, max_staleness, false};
}
inline consistency strong() noexcept {
  return {consistency::level::strong, {}, {}, false};
}

struct request_meta {
  std::string correlation_id;  // ties together logs, events and outcomes of one request
  // A command's idempotency key; empty when the caller gave none. A retry with the same id gets
  // the first outcome again (success or refusal) without running the command; the same id with
  // another command type or payload is errc::idempotency_key_reused. See command_id_for().
  std::string command_id;
  cleave::principal principal;
  clock::time_point deadline = clock::time_point::max();
  // For queries: how fresh the answer must be. A behavior that tightens it for the steps after
  // it passes them a copy (read_your_writes sends a query that waited for its views to the
  // primary, where those views are); the query bus hands the final value to begin_read().
  cleave::consistency consistency;
  // For a command: the scheduled command it carries out (set by the scheduler). Its schedule is
  // taken out of the table in the command's own transaction before the handler runs; when it is
  // no longer pending (cancelled or replaced) the command does not run (errc::not_found).
  std::string schedule_id;
};

// The command id for an idempotency key a transport (HTTP, the CLI) received from `who`: the key
// itself for an anonymous caller, else scoped to the subject, so that two principals' keys never
// collide. A key is 1 to 255 visible ASCII characters (no spaces); else errc::validation.
result<std::string> command_id_for(const principal& who, std::string_view key);

// A value bound to a `$n` placeholder or read from a column: null, integer, real or text.
using sql_value = std::variant<std::monostate, std::int64_t, double, std::string_view>;

// One row handed to a row callback; the views it returns stay valid until the callback returns.
class row_view {
 public:
  virtual std::size_t size() const = 0;
  virtual sql_value get(std::size_t column) const = 0;
  virtual std::string_view column_name(std::size_t column) const = 0;

 protected:
  ~row_view() = default;
};

using row_callback = function_ref<void(const row_view&)>;

// An event on its way into the log, already encoded.
struct pending_event {
  std::string_view type;    // the event's wire name
  std::string_view stream;  // the stream it belongs to; empty for none
  json payload;
  // When set, the append is a conflict unless the stream's current version (its number of
  // events, 0 for a new stream) equals this.
  std::optional<std::uint64_t> expected_version;
  // Whether the caller uses the version append() returns. When it does not, and sets no expected
  // version, a backend may leave the version to the database and return 0 (PostgreSQL then reads
  // nothing before the insert, which travels with the commit).
  bool version_wanted = true;
};

// Read access to a store. Implementations throw cleave::error_exception on failure.
class read_session {
 public:
  virtual ~read_session() = default;
  // Runs one statement with `$1, $2, …` bound to params, calling on_row for each result row.
  // A second statement in `sql` is an error (errc::internal).
  virtual void query(std::string_view sql, std::span<const sql_value> params,
                     row_callback on_row) = 0;
};

// One write transaction. Implementations throw cleave::error_exception on failure.
class write_session : public read_session {
 public:
  // Runs one statement; returns the number of rows it changed. A second statement in `sql` is
  // an error (errc::internal), on every backend: run statements one by one.
  virtual std::int64_t exec(std::string_view sql, std::span<const sql_value> params) = 0;
  // Runs statements without parameters, any number separated by `;` (a view's schema).
  virtual void script(std::string_view sql) = 0;
  // What defer() did: ran the statement now (`rows` is what it changed) or queued it (`rows` is
  // -1; `ticket` names it to deferred_rows).
  struct deferred {
    std::int64_t rows = -1;
    std::uint64_t ticket = 0;
  };
  // Runs a statement whose count of changed rows may never be asked for. A backend that can
  // queue statements (PostgreSQL's pipeline mode) sends it with the ones after it, in one round
  // trip; its failure then surfaces at the next statement that waits for an answer (or when its
  // count is asked for), as that statement's failure. By default it runs now.
  virtual deferred defer(std::string_view sql, std::span<const sql_value> params) {
    return {exec(sql, params), 0};
  }
  // The rows queued statement `ticket` changed, waiting for its answer (within its
  // transaction).
  virtual std::int64_t deferred_rows(std::uint64_t ticket) {
    (void)ticket;
    return 0;
  }
  // Appends an event to the log inside this transaction; returns the stream's version after it
  // (0 for an event without a stream). Throws an error_exception with errc::conflict when the
  // expected version does not match.
  virtual std::uint64_t append(const pending_event& event) = 0;
};

// The rows a statement changed. A statement queued (write_session::defer: PostgreSQL's pipeline
// mode) is sent with the ones after it in one round trip: reading this count waits for its
// answer. Read it before the transaction ends.
class rows_changed {
 public:
  rows_changed(write_session& tx, write_session::deferred d) noexcept : tx_(&tx), d_(d) {}
  operator std::int64_t() const {  // NOLINT: implicit, as the count it stands for
    return d_.rows >= 0 ? d_.rows : tx_->deferred_rows(d_.ticket);
  }

 private:
  write_session* tx_;
  write_session::deferred d_;
};

// The first outcome of a command that carried an id, returned again to every retry.
struct remembered_outcome {
  std::string command_type;      // the wire name it was recorded for
  std::optional<error> failure;  // set when the command was refused
  json response;                 // the handler's response as JSON (null for none)
  position_token position;
  // Identifies the command's payload (a hash of its type and canonical JSON), so that the id
  // reused with another payload is refused; empty in outcomes recorded before it existed.
  std::string fingerprint;
  std::string correlation_id;  // of the request that ran the command
};

// Encodes an outcome as stored: {"response": …} or {"error": {"category", "message", "fields"}},
// with "fingerprint" and "correlation_id" beside.
json outcome_to_json(const remembered_outcome& outcome);
// Reads it back (type and position come from elsewhere); malformed input is errc::internal.
result<remembered_outcome> outcome_from_json(const json& stored);

// A write transaction as the command bus drives it. The source lends it out; exactly one of
// commit() or rollback() ends it and gives it back, after which the caller must not touch it.
class write_transaction : public write_session {
 public:
  // Commits; returns the position of what this transaction appended (or the log's position).
  // When it throws, the transaction is already rolled back and given back.
  virtual position_token commit() = 0;
  virtual void rollback() noexcept = 0;

  // Idempotent commands (request_meta::command_id set): the outcome already recorded for this
  // transaction's command id and not yet expired, if any.
  virtual std::optional<remembered_outcome> remembered() = 0;
  // Records the outcome under this transaction's command id, at the position of what it appended
  // so far; it commits or rolls back with the command's effects. Throws an error_exception with
  // errc::conflict when a concurrent transaction recorded the same id first.
  virtual void remember(const remembered_outcome& outcome) = 0;

  // Group commit (several commands in one transaction, each in a savepoint): what is appended or
  // remembered from now on belongs to `meta`'s request.
  virtual void rebind(const request_meta& meta) = 0;
  // The token commit() would return for what this transaction appended so far (without the
  // commit LSN, which only the commit knows).
  virtual position_token position_so_far() = 0;

  // Group commit on a backend that holds statements until their answers are needed
  // (PostgreSQL's pipeline), so that members' statements travel together: whether it holds
  // them; a mark of the statements held or sent so far (increasing); the mark of the statement
  // whose failure was thrown, since the last rollback to a savepoint; and the token of what was
  // appended before a mark, once the statements before it are answered. Where each statement
  // runs when it is called, only holds_statements() is asked.
  virtual bool holds_statements() const { return false; }
  virtual std::uint64_t statement_mark() { return 0; }
  virtual std::optional<std::uint64_t> failed_statement() { return std::nullopt; }
  virtual position_token position_before(std::uint64_t /*mark*/) { return position_so_far(); }
};

// A read-only transaction as the query bus drives it; finish() ends it and gives it back.
class read_transaction : public read_session {
 public:
  virtual void finish() noexcept = 0;
};

// How far a write transaction is kept apart from concurrent ones.
enum class isolation {
  // As if write transactions ran one at a time: what a transaction read still holds when it
  // commits, or it fails with a cleave::transient_error (which the command bus retries).
  serializable,
  // Each statement sees what had committed when it began; a rule checked by reading first and
  // writing after may be broken by a concurrent transaction. Only where a backend has it
  // (PostgreSQL); SQLite's single writer is serializable either way.
  read_committed,
};

// The stable lower-case name of a level ("serializable", "read_committed").
std::string_view to_string(isolation level) noexcept;

// Where the buses get their transactions. Lending does not allocate in a pooled implementation.
// The transaction copies what it needs of `meta`, which need not outlive the call. Thread-safe.
class session_source {
 public:
  virtual ~session_source() = default;
  // A write transaction at `level` (at least: a backend may give a stronger one).
  virtual write_transaction& begin_write(const request_meta& meta, isolation level) = 0;
  // A write transaction at isolation::serializable.
  write_transaction& begin_write(const request_meta& meta) {
    return begin_write(meta, isolation::serializable);
  }
  // Runs `work` in one write transaction at `level` and commits it when `work` returns true
  // (returning commit()'s token), or rolls it back when `work` returns false (an empty token) or
  // throws (the exception passes on). `work` must not end the transaction itself. A source may
  // run `work` on another thread while the caller waits: group commit runs the queued commands
  // of a group one after another on one thread, with no hand-off between them. By default:
  // begin_write, then commit or roll back on the caller's thread.
  virtual position_token write(const request_meta& meta, isolation level,
                               function_ref<bool(write_transaction&)> work);
  // A read-only transaction for a read that must be as fresh as `wanted` (a backend with read
  // replicas picks one that satisfies it, or the primary).
  virtual read_transaction& begin_read(const request_meta& meta, const consistency& wanted) = 0;
  // A read-only transaction at meta.consistency.
  read_transaction& begin_read(const request_meta& meta) {
    return begin_read(meta, meta.consistency);
  }
};

// A write transaction lent by a session_source, owned for one scope: the destructor rolls it
// back unless commit() or rollback() ended it first, so no path out of a scope (a return, an
// exception) leaves it open. Move-only.
class write_scope {
 public:
  write_scope(session_source& source, const request_meta& meta,
              isolation level = isolation::serializable)
      : tx_(&source.begin_write(meta, level)) {}
  // Takes charge of a transaction already begun (a backend's own).
  explicit write_scope(write_transaction& begun) noexcept : tx_(&begun) {}
  write_scope(write_scope&& other) noexcept : tx_(std::exchange(other.tx_, nullptr)) {}
  write_scope& operator=(write_scope&&) = delete;
  ~write_scope() { rollback(); }

  write_transaction& operator*() const noexcept { return *tx_; }
  write_transaction* operator->() const noexcept { return tx_; }
  // Whether the transaction is still open (neither committed nor rolled back).
  bool open() const noexcept { return tx_ != nullptr; }
  // Commits and ends the scope's hold; returns the position of what was appended. When it
  // throws, the transaction is already rolled back.
  position_token commit() { return std::exchange(tx_, nullptr)->commit(); }
  // Rolls back now rather than at the end of the scope; does nothing once ended.
  void rollback() noexcept {
    if (auto* tx = std::exchange(tx_, nullptr)) tx->rollback();
  }

 private:
  write_transaction* tx_;
};

// A read-only transaction owned for one scope: finished when the scope ends. Move-only.
class read_scope {
 public:
  read_scope(session_source& source, const request_meta& meta, const consistency& wanted)
      : tx_(&source.begin_read(meta, wanted)) {}
  read_scope(session_source& source, const request_meta& meta)
      : read_scope(source, meta, meta.consistency) {}
  // Takes charge of a transaction already begun (a backend's own).
  explicit read_scope(read_transaction& begun) noexcept : tx_(&begun) {}
  read_scope(read_scope&& other) noexcept : tx_(std::exchange(other.tx_, nullptr)) {}
  read_scope& operator=(read_scope&&) = delete;
  ~read_scope() {
    if (tx_) tx_->finish();
  }

  read_transaction& operator*() const noexcept { return *tx_; }
  read_transaction* operator->() const noexcept { return tx_; }

 private:
  read_transaction* tx_;
};

}  // namespace cleave
