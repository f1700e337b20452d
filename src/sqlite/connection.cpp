#include "connection.hpp"

#include <utility>

#include <fmt/format.h>

namespace cleave::sqlite::detail {

using cleave::detail::db_failure;
using cleave::detail::throw_db_failure;

void throw_error(sqlite3* db, int rc, std::string_view doing, std::string_view correlation_id) {
  const char* text = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  throw_db_failure(failure_of(rc), fmt::format("{}: {}", doing, text), correlation_id, text);
}

db_failure failure_of(int rc) {
  switch (rc) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
      return db_failure::unique;
    case SQLITE_CONSTRAINT_CHECK:
      return db_failure::check;
    case SQLITE_CONSTRAINT_FOREIGNKEY:
      return db_failure::foreign_key;
    case SQLITE_CONSTRAINT_NOTNULL:
      return db_failure::not_null;
    case SQLITE_CONSTRAINT_TRIGGER:
      return db_failure::raised;
    default:
      break;
  }
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return db_failure::busy;
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
      return db_failure::unavailable;
    case SQLITE_READONLY:
      return db_failure::read_only;
    default:
      return db_failure::other;
  }
}

statement::statement(sqlite3* db, std::string_view sql, const std::string& correlation_id)
    : db_(db), sql_(sql), correlation_id_(correlation_id) {
  const char* tail = nullptr;
  int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &stmt_, &tail);
  if (rc != SQLITE_OK) throw_error(db, rc, fmt::format("preparing `{}`", sql), correlation_id_);
  // Anything but whitespace and comments after the first statement is a second one, which
  // sqlite3_prepare would leave unrun.
  const char* end = sql.data() + sql.size();
  if (tail && tail < end) {
    sqlite3_stmt* next = nullptr;
    rc = sqlite3_prepare_v3(db, tail, static_cast<int>(end - tail), 0, &next, nullptr);
    sqlite3_finalize(next);
    if (rc != SQLITE_OK || next) {
      sqlite3_finalize(std::exchange(stmt_, nullptr));
      throw_db_failure(db_failure::multiple_statements,
                       fmt::format("`{}` holds more than one statement", sql), correlation_id_);
    }
  }
  const int count = sqlite3_bind_parameter_count(stmt_);
  for (int i = 1; i <= count; ++i) {
    const char* name = sqlite3_bind_parameter_name(stmt_, i);
    const int n = name && name[0] == '$' ? std::atoi(name + 1) : 0;
    if (n <= 0) {
      sqlite3_finalize(std::exchange(stmt_, nullptr));
      throw_db_failure(db_failure::placeholders,
                       fmt::format("`{}`: placeholder {} is not $<number>", sql, name ? name : "?"),
                       correlation_id_);
    }
    if (slots_.size() < static_cast<std::size_t>(n)) slots_.resize(static_cast<std::size_t>(n), 0);
    slots_[static_cast<std::size_t>(n - 1)] = i;
  }
}

statement::~statement() {
  sqlite3_finalize(stmt_);
}

void statement::bind(std::span<const sql_value> params) {
  if (params.size() < slots_.size())
    throw_db_failure(db_failure::placeholders,
                     fmt::format("`{}` has ${} but was given {} parameter(s)", sql_, slots_.size(),
                                 params.size()),
                     correlation_id_);
  for (std::size_t n = 0; n < slots_.size(); ++n) {
    const int slot = slots_[n];
    if (slot == 0) continue;
    const auto& v = params[n];
    int rc = SQLITE_OK;
    if (std::holds_alternative<std::monostate>(v)) {
      rc = sqlite3_bind_null(stmt_, slot);
    } else if (auto* i = std::get_if<std::int64_t>(&v)) {
      rc = sqlite3_bind_int64(stmt_, slot, *i);
    } else if (auto* d = std::get_if<double>(&v)) {
      rc = sqlite3_bind_double(stmt_, slot, *d);
    } else {
      auto s = std::get<std::string_view>(v);
      // SQLite would store it; PostgreSQL cannot. Refused on both, so that a handler means the
      // same on each.
      if (s.find('\0') != std::string_view::npos)
        throw_db_failure(db_failure::nul_character,
                         fmt::format("parameter ${} of `{}` contains U+0000", slot, sql_),
                         correlation_id_);
      // An empty view may have no data pointer, which SQLite would bind as NULL.
      rc = sqlite3_bind_text64(stmt_, slot, s.data() ? s.data() : "", s.size(), SQLITE_STATIC,
                               SQLITE_UTF8);
    }
    if (rc != SQLITE_OK) throw_error(db_, rc, "binding a parameter", correlation_id_);
  }
}

bool statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  throw_error(db_, rc, fmt::format("running `{}`", sql_), correlation_id_);
}

void statement::reset() noexcept {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

std::size_t statement::size() const {
  return static_cast<std::size_t>(sqlite3_column_count(stmt_));
}

sql_value statement::get(std::size_t column) const {
  const int c = static_cast<int>(column);
  switch (sqlite3_column_type(stmt_, c)) {
    case SQLITE_NULL:
      return std::monostate{};
    case SQLITE_INTEGER:
      return sqlite3_column_int64(stmt_, c);
    case SQLITE_FLOAT:
      return sqlite3_column_double(stmt_, c);
    default:
      return text_at(c);
  }
}

std::string_view statement::text_at(int column) const {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
  return p ? std::string_view(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column)))
           : std::string_view();
}

std::string_view statement::column_name(std::size_t column) const {
  const char* name = sqlite3_column_name(stmt_, static_cast<int>(column));
  return name ? name : "";
}

connection::connection(const std::string& path, int flags, std::chrono::milliseconds busy_timeout) {
  const int rc = sqlite3_open_v2(path.c_str(), &db_, flags | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string why = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw error_exception({errc::unavailable, fmt::format("opening {}: {}", path, why), {}});
  }
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_timeout(db_, static_cast<int>(busy_timeout.count()));
}

connection::~connection() {
  cache_.clear();
  sqlite3_close_v2(db_);
}

void connection::script(std::string_view sql) {
  std::string text(sql);
  char* message = nullptr;
  const int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &message);
  if (rc != SQLITE_OK) {
    std::string why = message ? message : sqlite3_errstr(rc);
    sqlite3_free(message);
    throw_db_failure(failure_of(sqlite3_extended_errcode(db_)),
                     fmt::format("running `{}`: {}", sql.substr(0, 200), why), correlation_id_,
                     why);
  }
}

statement& connection::prepare(std::string_view sql, std::span<const sql_value> params) {
  auto it = cache_.find(sql);
  if (it == cache_.end())
    it = cache_.emplace(std::string(sql), std::make_unique<statement>(db_, sql, correlation_id_))
             .first;
  auto& s = *it->second;
  s.reset();
  s.bind(params);
  return s;
}

std::int64_t connection::exec(std::string_view sql, std::span<const sql_value> params) {
  auto& s = prepare(sql, params);
  while (s.step()) {
  }
  s.reset();
  return sqlite3_changes64(db_);
}

}  // namespace cleave::sqlite::detail
