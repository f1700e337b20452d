#include "connection.hpp"

#include <array>
#include <charconv>
#include <cstdlib>
#include <cstring>

#include <endian.h>

#include <fmt/format.h>

namespace cleave::postgres::detail {

namespace {
// Type OIDs (pg_type.h) read as numbers rather than text.
constexpr Oid bool_oid = 16, int8_oid = 20, int2_oid = 21, int4_oid = 23, float4_oid = 700,
              float8_oid = 701, numeric_oid = 1700;
}  // namespace

errc category_of(std::string_view state) {
  if (state == "23505" || state == "40001" || state == "40P01") return errc::conflict;
  if (state == "25006") return errc::forbidden;  // read_only_sql_transaction
  if (state == "23503" || state == "23514" || state == "P0001") return errc::rejected;
  if (state.starts_with("08") || state.starts_with("53") || state.starts_with("57") ||
      state == "55P03")
    return errc::unavailable;
  return errc::internal;
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
    throw error_exception(
        {errc::unavailable, fmt::format("connecting to PostgreSQL: {}", why), {}});
  }
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
}

connection::~connection() {
  PQfinish(conn_);
}

void connection::fail(PGresult* r, std::string_view verb, std::string_view sql) {
  const char* state_field = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  const std::string state = state_field ? state_field : "";  // copied: PQclear frees it
  std::string why = r ? PQresultErrorMessage(r) : PQerrorMessage(conn_);
  PQclear(r);
  while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
  const errc category =
      !state.empty() ? category_of(state) : (healthy() ? errc::internal : errc::unavailable);
  throw error_exception({category, fmt::format("{} `{}`: {}", verb, sql.substr(0, 200), why), {}});
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
