#pragma once
// Thin RAII over the sqlite3 C API: a connection with a cache of prepared statements.

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <sqlite3.h>

#include <cleave/core/detail/string_hash.hpp>
#include <cleave/core/error.hpp>
#include <cleave/core/session.hpp>
#include <cleave/store/detail/failure.hpp>

namespace cleave::sqlite::detail {

// Throws the plain error of a failed sqlite3 call (a unique violation is a conflict, busy and
// I/O failures unavailable, a write on a read-only connection forbidden, ...); the log gets
// `doing` and SQLite's message.
[[noreturn]] void throw_error(sqlite3* db, int rc, std::string_view doing,
                              std::string_view correlation_id);
// The kind of failure an (extended) sqlite3 result code reports.
cleave::detail::db_failure failure_of(int rc);

// A prepared statement whose `$1, $2, …` placeholders are bound by number. One statement: text
// after it other than whitespace and comments is an error (db_failure::multiple_statements).
class statement final : public row_view {
 public:
  // `correlation_id` (the connection's) is named in the log when the statement fails.
  statement(sqlite3* db, std::string_view sql, const std::string& correlation_id);
  ~statement();
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;

  void bind(std::span<const sql_value> params);
  // Advances; true while there is a row.
  bool step();
  void reset() noexcept;

  std::size_t size() const override;
  sql_value get(std::size_t column) const override;
  std::string_view column_name(std::size_t column) const override;

  std::int64_t int_at(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::string_view text_at(int column) const;

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  std::vector<int> slots_;  // slots_[n-1]: the bind index of $n, 0 when unused
  std::string sql_;
  const std::string& correlation_id_;
};

class connection {
 public:
  connection(const std::string& path, int flags, std::chrono::milliseconds busy_timeout);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  // Runs statements without parameters or results (PRAGMAs, DDL, BEGIN/COMMIT).
  void script(std::string_view sql);
  // The cached statement for `sql`, reset and bound to `params`.
  statement& prepare(std::string_view sql, std::span<const sql_value> params = {});
  // Runs one statement to completion; returns the rows it changed.
  std::int64_t exec(std::string_view sql, std::span<const sql_value> params);

  sqlite3* handle() const noexcept { return db_; }
  // The request whose statements follow, named in the log when one fails.
  void set_correlation_id(std::string_view id) { correlation_id_.assign(id); }

 private:
  sqlite3* db_ = nullptr;
  std::string correlation_id_;
  std::unordered_map<std::string, std::unique_ptr<statement>, cleave::detail::string_hash,
                     std::equal_to<>>
      cache_;
};

}  // namespace cleave::sqlite::detail
