#pragma once
// Thin RAII over libpq: a connection that prepares each statement once.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <libpq-fe.h>

#include <cleave/core/detail/string_hash.hpp>
#include <cleave/core/error.hpp>
#include <cleave/core/session.hpp>
#include <cleave/store/detail/failure.hpp>

namespace cleave::postgres::detail {

// The kind of failure a SQLSTATE reports (unique violation, serialization failure, ...).
cleave::detail::db_failure failure_of(std::string_view sqlstate);

// The number of rows an INSERT, UPDATE or DELETE answered with `r` changed.
std::int64_t rows_affected(PGresult* r);

// An owned PGresult, readable as rows.
class result_set final : public row_view {
 public:
  explicit result_set(PGresult* r) noexcept : result_(r) {}
  result_set(result_set&& other) noexcept
      : result_(std::exchange(other.result_, nullptr)), row_(other.row_) {}
  ~result_set() { PQclear(result_); }
  result_set& operator=(result_set&&) = delete;

  int rows() const { return PQntuples(result_); }
  ExecStatusType status() const { return PQresultStatus(result_); }
  std::string_view command_tag() const { return PQcmdStatus(result_); }
  PGresult* release() noexcept { return std::exchange(result_, nullptr); }
  // The number of rows an INSERT, UPDATE or DELETE changed.
  std::int64_t affected() const;
  void at(int row) { row_ = row; }
  bool is_null(int row, int column) const { return PQgetisnull(result_, row, column) != 0; }
  std::string_view text(int row, int column) const {
    return {PQgetvalue(result_, row, column),
            static_cast<std::size_t>(PQgetlength(result_, row, column))};
  }
  std::int64_t integer(int row, int column) const;
  // An 8-byte column of a binary result (int8, xid8, timestamptz), as sent: big-endian.
  std::uint64_t binary_u64(int row, int column) const;

  std::size_t size() const override { return static_cast<std::size_t>(PQnfields(result_)); }
  sql_value get(std::size_t column) const override;
  std::string_view column_name(std::size_t column) const override;

 private:
  PGresult* result_;
  int row_ = 0;
};

class connection {
 public:
  // Connects within connect_timeout seconds (libpq's `connect_timeout`, unless the URL sets its
  // own), so that a server that accepts but never answers cannot hold the caller.
  explicit connection(const std::string& url, int connect_timeout = 2);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  // Runs one statement with `$1, $2, …` bound to params (prepared on first use). Binary results
  // skip the server's text conversions; read them with text() (text columns) and binary_u64().
  enum class result_format { text, binary };
  result_set run(std::string_view sql, std::span<const sql_value> params = {},
                 result_format format = result_format::text);
  // Runs statements without parameters (BEGIN, COMMIT, DDL); returns the last result.
  result_set script(std::string_view sql);

  // Queues a statement (pipeline mode, entered by the first): its answer is read with the
  // others' at the next sync() — which a thousand queued statements take by themselves. A run()
  // while statements are queued is queued after them and sent with them in the same round trip;
  // script() syncs first. Returns its ticket for rows_of(), and for take() when `keep`.
  std::uint64_t defer(std::string_view sql, std::span<const sql_value> params, bool keep = false);
  // Queues one statement without parameters and unprepared (BEGIN, SET LOCAL, COMMIT).
  std::uint64_t defer_plain(std::string_view sql, bool keep = false);
  // Whether statements are queued, not yet synced.
  bool pipelining() const noexcept { return pipelining_; }
  // The answer of a statement queued with `keep`, once synced (failed or aborted ones too); an
  // empty optional when none came (the connection broke first) or it was taken.
  std::optional<result_set> take(std::uint64_t ticket);
  // Reads the queued statements' answers and leaves pipeline mode; throws the first failure
  // among them as run() would (a broken connection or a deadline that ran out: errc::timeout).
  // A first failure of a statement with ticket `tolerate_from` or later is not thrown (the
  // caller rolls back to a savepoint taken there).
  void sync(std::uint64_t tolerate_from = UINT64_MAX);
  // The ticket the next queued statement gets.
  std::uint64_t next_ticket() const noexcept { return rows_.size() + queued_rows_; }
  // The ticket of the first queued statement whose failure sync() threw, since forget_failure()
  // (or the transaction's start); a tolerated failure is not one.
  std::optional<std::uint64_t> failed_ticket() const noexcept { return failed_ticket_; }
  void forget_failure() noexcept { failed_ticket_.reset(); }
  // Whether the server already closed the connection (a restart, an administrator's kill), found
  // from what it sent while the connection lay in the pool, without a round trip.
  bool closed_by_server();
  // Drops the queued statements' answers without raising (before a rollback).
  void discard_queued() noexcept;
  // The rows queued statement `ticket` changed (sync()s first when it is still queued).
  std::int64_t rows_of(std::uint64_t ticket);
  // Forgets the counts and kept answers of earlier transactions' queued statements.
  void forget_rows() noexcept;

  // Until when a statement may wait for its answer before the connection is given up as stuck
  // (errc::timeout; the connection is then broken): a guard for a server that stopped answering,
  // which its own statement_timeout cannot cover. time_point::max() waits as long as it takes.
  void guard_until(clock::time_point until) noexcept { guard_ = until; }
  // Bounds each statement's wait on its own as well (nullopt: only the guard).
  void answer_within(std::optional<std::chrono::milliseconds> within) noexcept { within_ = within; }
  // Whether a failure of a write statement for want of a writable database (SQLSTATE 25006) is
  // the database's state (a write transaction: unavailable) or the statement's fault (a query).
  void set_writing(bool writing) noexcept { writing_ = writing; }

  bool healthy() const { return !broken_ && PQstatus(conn_) == CONNECTION_OK; }
  // Broken by the server's doing: the connection failed, or a statement went unanswered for its
  // own bound (answer_within) — not because the caller's deadline came first.
  bool stalled() const { return stalled_ || PQstatus(conn_) != CONNECTION_OK; }
  // Whether the guard has run out: a statement sent now would not be waited for.
  bool out_of_time() const { return guarded() && limit() <= clock::now(); }
  // The request whose statements follow, named in the log when one fails.
  void set_correlation_id(std::string_view id) { correlation_id_.assign(id); }
  PGconn* handle() const noexcept { return conn_; }

 private:
  // Throws the plain error of a failed `verb` ("running", "preparing") of `sql`; logs the detail.
  [[noreturn]] void fail(PGresult* r, std::string_view verb, std::string_view sql);
  PGresult* check(PGresult* r, std::string_view verb, std::string_view sql);
  // Waits (up to the guard) until a result can be read without blocking; false when the guard
  // ran out first, the connection then broken.
  bool wait_readable(clock::time_point limit);
  // When a statement sent now must have its answer; max() for no guard.
  clock::time_point limit() const;
  bool guarded() const noexcept { return within_ || guard_ != clock::time_point::max(); }
  // The result of what was sent: the first failure, else the last result; null when the
  // connection broke or the guard ran out.
  PGresult* collect();
  // collect() of what was `sent` (else the connection's error), checked as check() does; a
  // guard that ran out is errc::timeout.
  PGresult* await(bool sent, std::string_view verb, std::string_view sql);
  // The name `sql` is prepared under, preparing it first (queued in the pipeline with `queue`).
  const std::string& prepared_name(std::string_view sql, bool queue);
  // Calls send(count, values, lengths) with `params` as libpq takes them (text).
  template <class Send>
  auto with_params(std::string_view sql, std::span<const sql_value> params, Send&& send);

  // A statement queued in the pipeline: a preparation, or a run with its ticket.
  struct queued {
    std::string sql;
    bool prepare = false;
    std::uint64_t ticket = 0;
    bool keep = false;  // its answer is kept for take()
  };
  // Queues a run of a prepared statement (text or binary results); returns its ticket.
  std::uint64_t queue_run(std::string_view sql, std::span<const sql_value> params, int binary,
                          bool keep);
  // Enters pipeline mode when not in it yet.
  void enter_pipeline(std::string_view sql);
  // Notes a queued run; returns its ticket.
  std::uint64_t queued_run(std::string_view sql, bool keep);
  // Syncs when max_queued runs wait, before another is queued.
  void make_room();
  static constexpr std::size_t max_queued = 1000;
  bool pipelining_ = false;
  std::vector<queued> queued_;
  std::size_t queued_rows_ = 0;                            // runs queued (not preparations)
  std::vector<std::int64_t> rows_;                         // the answered runs' counts, by ticket
  std::vector<std::pair<std::uint64_t, PGresult*>> kept_;  // kept answers, by ticket
  std::optional<std::uint64_t> failed_ticket_;

  clock::time_point guard_ = clock::time_point::max();
  std::optional<std::chrono::milliseconds> within_;
  bool writing_ = false, broken_ = false, stalled_ = false;
  PGconn* conn_ = nullptr;
  std::string correlation_id_;
  std::unordered_map<std::string, std::string, cleave::detail::string_hash, std::equal_to<>>
      prepared_;
};

}  // namespace cleave::postgres::detail
