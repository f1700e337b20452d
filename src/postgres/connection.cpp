#include "connection.hpp"

#include <array>
#include <charconv>
#include <cstdlib>
#include <cstring>

#include <endian.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cleave/store/detail/failure.hpp>

namespace cleave::postgres::detail {

using cleave::detail::db_failure;
using cleave::detail::throw_db_failure;

namespace {
// Type OIDs (pg_type.h) read as numbers rather than text.
constexpr Oid bool_oid = 16, int8_oid = 20, int2_oid = 21, int4_oid = 23, float4_oid = 700,
              float8_oid = 701, numeric_oid = 1700;
}  // namespace

db_failure failure_of(std::string_view state) {
  if (state == "23505") return db_failure::unique;
  if (state == "23503") return db_failure::foreign_key;
  if (state == "23514") return db_failure::check;
  if (state == "23502") return db_failure::not_null;
  if (state == "P0001") return db_failure::raised;
  if (state == "40001") return db_failure::serialization;
  if (state == "40P01") return db_failure::deadlock;
  if (state == "25006") return db_failure::read_only;
  if (state == "55P03") return db_failure::busy;
  if (state == "22P05" || state == "22021") return db_failure::nul_character;
  if (state.starts_with("08") || state.starts_with("53") || state.starts_with("57"))
    return db_failure::unavailable;
  return db_failure::other;
}

std::int64_t result_set::affected() const {
  std::string_view t = PQcmdTuples(result_);
  std::int64_t v = 0;
  std::from_chars(t.data(), t.data() + t.size(), v);
  return v;
}

std::uint64_t result_set::binary_u64(int row, int column) const {
  auto t = text(row, column);
  if (t.size() != 8) return 0;
  std::uint64_t v = 0;
  std::memcpy(&v, t.data(), 8);
  return be64toh(v);
}

std::int64_t result_set::integer(int row, int column) const {
  auto t = text(row, column);
  std::int64_t v = 0;
  std::from_chars(t.data(), t.data() + t.size(), v);
  return v;
}

sql_value result_set::get(std::size_t column) const {
  const int c = static_cast<int>(column);
  if (is_null(row_, c)) return std::monostate{};
  switch (PQftype(result_, c)) {
    case bool_oid:
      return std::int64_t{text(row_, c) == "t" ? 1 : 0};
    case int2_oid:
    case int4_oid:
    case int8_oid:
      return integer(row_, c);
    case float4_oid:
    case float8_oid:
    case numeric_oid:
      return std::strtod(PQgetvalue(result_, row_, c), nullptr);
    default:
      return text(row_, c);
  }
}

std::string_view result_set::column_name(std::size_t column) const {
  const char* name = PQfname(result_, static_cast<int>(column));
  return name ? name : "";
}

connection::connection(const std::string& url) {
  conn_ = PQconnectdb(url.c_str());
  if (PQstatus(conn_) != CONNECTION_OK) {
    std::string why = PQerrorMessage(conn_);
    PQfinish(conn_);
    conn_ = nullptr;
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    // The reason names hosts, sockets and users: for the log, not for a caller over HTTP.
    spdlog::warn("connecting to PostgreSQL failed: {}", why);
    throw error_exception(
        {errc::unavailable, "connecting to PostgreSQL failed (the log says why)", {}});
  }
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
}

connection::~connection() {
  PQfinish(conn_);
}

void connection::fail(PGresult* r, std::string_view verb, std::string_view sql) {
  const auto field = [&](int code) -> std::string {
    const char* v = r ? PQresultErrorField(r, code) : nullptr;
    return v ? v : "";  // copied: PQclear frees it
  };
  const std::string state = field(PG_DIAG_SQLSTATE), primary = field(PG_DIAG_MESSAGE_PRIMARY);
  std::string why = r ? PQresultErrorMessage(r) : PQerrorMessage(conn_);
  PQclear(r);
  while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
  auto kind = !state.empty() ? failure_of(state)
                             : (healthy() ? db_failure::other : db_failure::unavailable);
  // PostgreSQL refuses a prepared statement of several commands as a syntax error.
  if (state == "42601" && primary.starts_with("cannot insert multiple commands"))
    kind = db_failure::multiple_statements;
  throw_db_failure(kind,
                   fmt::format("{} `{}`: {} (SQLSTATE {})", verb, sql.substr(0, 200), why, state),
                   correlation_id_, primary);
}

PGresult* connection::check(PGresult* r, std::string_view verb, std::string_view sql) {
  const auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail(r, verb, sql);
  return r;
}

result_set connection::run(std::string_view sql, std::span<const sql_value> params,
                           result_format format) {
  auto it = prepared_.find(sql);
  if (it == prepared_.end()) {
    std::string name = fmt::format("cleave_{}", prepared_.size());
    std::string text(sql);
    PQclear(check(PQprepare(conn_, name.c_str(), text.c_str(), 0, nullptr), "preparing", sql));
    it = prepared_.emplace(std::move(text), std::move(name)).first;
  }
  // Parameters travel as text; numbers are formatted into a small buffer each.
  constexpr std::size_t inline_params = 16;
  std::array<std::array<char, 32>, inline_params> numbers;
  std::vector<std::array<char, 32>> more_numbers;
  std::array<const char*, inline_params> inline_values;
  std::array<int, inline_params> inline_lengths;
  std::vector<const char*> more_values;
  std::vector<int> more_lengths;
  const char** values = inline_values.data();
  int* lengths = inline_lengths.data();
  std::array<char, 32>* buffers = numbers.data();
  if (params.size() > inline_params) {
    more_values.resize(params.size());
    more_lengths.resize(params.size());
    more_numbers.resize(params.size());
    values = more_values.data();
    lengths = more_lengths.data();
    buffers = more_numbers.data();
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto& v = params[i];
    if (std::holds_alternative<std::monostate>(v)) {
      values[i] = nullptr;
      lengths[i] = 0;
    } else if (auto* s = std::get_if<std::string_view>(&v)) {
      values[i] = s->data() ? s->data() : "";
      lengths[i] = static_cast<int>(s->size());
    } else {
      auto& buf = buffers[i];
      auto [end, ec] =
          std::holds_alternative<std::int64_t>(v)
              ? std::to_chars(buf.data(), buf.data() + buf.size() - 1, std::get<std::int64_t>(v))
              : std::to_chars(buf.data(), buf.data() + buf.size() - 1, std::get<double>(v));
      *end = '\0';
      values[i] = buf.data();
      lengths[i] = static_cast<int>(end - buf.data());
    }
  }
  // Text parameters are NUL-terminated for libpq only when given lengths with binary format;
  // with text format libpq reads up to the NUL, so views are copied when not terminated.
  std::vector<std::string> copies;
  copies.reserve(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (auto* s = std::get_if<std::string_view>(&params[i]); s && values[i]) {
      // libpq would end the text at the NUL and store the rest silently cut off.
      if (s->find('\0') != std::string_view::npos)
        throw_db_failure(
            db_failure::nul_character,
            fmt::format("parameter ${} of `{}` contains U+0000", i + 1, sql.substr(0, 200)),
            correlation_id_);
      copies.emplace_back(*s);
      values[i] = copies.back().c_str();
    }
  }
  return result_set(
      check(PQexecPrepared(conn_, it->second.c_str(), static_cast<int>(params.size()), values,
                           lengths, nullptr, format == result_format::binary ? 1 : 0),
            "running", sql));
}

result_set connection::script(std::string_view sql) {
  std::string text(sql);
  return result_set(check(PQexec(conn_, text.c_str()), "running", sql));
}

}  // namespace cleave::postgres::detail
