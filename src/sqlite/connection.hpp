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

namespace cleave::sqlite::detail {

// Throws an error_exception for a failed sqlite3 call, mapped onto cleave's categories
// (constraint violations are conflicts, busy and I/O failures unavailable, writes on a
// read-only connection forbidden).
[[noreturn]] void throw_error(sqlite3* db, int rc, std::string_view doing);
// The cleave category of an (extended) sqlite3 result code.
errc category_of(int rc);

// A prepared statement whose `$1, $2, …` placeholders are bound by number.
class statement final : public row_view {
 public:
  statement(sqlite3* db, std::string_view sql);
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

 private:
  sqlite3* db_ = nullptr;
  std::unordered_map<std::string, std::unique_ptr<statement>, cleave::detail::string_hash,
                     std::equal_to<>>
      cache_;
};

}  // namespace cleave::sqlite::detail
