#pragma once
// Thin RAII over libpq: a connection that prepares each statement once.

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <libpq-fe.h>

#include <cleave/core/detail/string_hash.hpp>
#include <cleave/core/error.hpp>
#include <cleave/core/session.hpp>
#include <cleave/store/detail/failure.hpp>

namespace cleave::postgres::detail {

// The kind of failure a SQLSTATE reports (unique violation, serialization failure, ...).
cleave::detail::db_failure failure_of(std::string_view sqlstate);

// An owned PGresult, readable as rows.
class result_set final : public row_view {
 public:
  explicit result_set(PGresult* r) noexcept : result_(r) {}
  result_set(result_set&& other) noexcept
      : result_(std::exchange(other.result_, nullptr)), row_(other.row_) {}
  ~result_set() { PQclear(result_); }
  result_set& operator=(result_set&&) = delete;

  int rows() const { return PQntuples(result_); }
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
  explicit connection(const std::string& url);
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

  bool healthy() const { return PQstatus(conn_) == CONNECTION_OK; }
  // The request whose statements follow, named in the log when one fails.
  void set_correlation_id(std::string_view id) { correlation_id_.assign(id); }
  PGconn* handle() const noexcept { return conn_; }

 private:
  // Throws the plain error of a failed `verb` ("running", "preparing") of `sql`; logs the detail.
  [[noreturn]] void fail(PGresult* r, std::string_view verb, std::string_view sql);
  PGresult* check(PGresult* r, std::string_view verb, std::string_view sql);

  PGconn* conn_ = nullptr;
  std::string correlation_id_;
  std::unordered_map<std::string, std::string, cleave::detail::string_hash, std::equal_to<>>
      prepared_;
};

}  // namespace cleave::postgres::detail
