#include "connection.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdlib>
#include <cstring>

#include <cerrno>
#include <climits>

#include <endian.h>
#include <poll.h>

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
  if (state == "CLV01") return db_failure::stream_version;  // cleave_next_version()
  if (state == "40001") return db_failure::serialization;
  if (state == "40P01") return db_failure::deadlock;
  if (state == "25006") return db_failure::read_only;
  // 57014: canceled by statement_timeout; 55P03: lock_timeout.
  if (state == "55P03" || state == "57014") return db_failure::timeout;
  if (state == "22P05" || state == "22021") return db_failure::nul_character;
  if (state.starts_with("08") || state.starts_with("53") || state.starts_with("57"))
    return db_failure::unavailable;
  return db_failure::other;
}

std::int64_t rows_affected(PGresult* r) {
  std::string_view t = PQcmdTuples(r);
  std::int64_t v = 0;
  std::from_chars(t.data(), t.data() + t.size(), v);
  return v;
}

std::int64_t result_set::affected() const {
  return rows_affected(result_);
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
    case numeric_oid: {
      // An integral numeric (sum() of bigints, round()) reads as an integer, as SQLite's does;
      // one with a fraction, or beyond 64 bits, as a double.
      const auto t = text(row_, c);
      std::int64_t v = 0;
      const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
      if (ec == std::errc{} && end == t.data() + t.size()) return v;
      return std::strtod(PQgetvalue(result_, row_, c), nullptr);
    }
    case float4_oid:
    case float8_oid:
      return std::strtod(PQgetvalue(result_, row_, c), nullptr);
    default:
      return text(row_, c);
  }
}

std::string_view result_set::column_name(std::size_t column) const {
  const char* name = PQfname(result_, static_cast<int>(column));
  return name ? name : "";
}

connection::connection(const std::string& url, int connect_timeout) {
  // Later keywords win over earlier ones: a connect_timeout in the URL overrides this one.
  const std::string timeout = std::to_string(connect_timeout);
  const char* keywords[] = {"connect_timeout", "dbname", nullptr};
  const char* values[] = {timeout.c_str(), url.c_str(), nullptr};
  conn_ = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
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
  forget_rows();
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
  if (kind == db_failure::read_only && writing_) kind = db_failure::read_only_database;
  // PostgreSQL refuses a prepared statement of several commands as a syntax error.
  if (state == "42601" && primary.starts_with("cannot insert multiple commands"))
    kind = db_failure::multiple_statements;
  throw_db_failure(kind,
                   fmt::format("{} `{}`: {} (SQLSTATE {})", verb, sql.substr(0, 200), why, state),
                   correlation_id_, primary);
}

clock::time_point connection::limit() const {
  return within_ ? std::min(guard_, clock::now() + *within_) : guard_;
}

bool connection::wait_readable(clock::time_point limit) {
  if (limit == clock::time_point::max()) return true;  // PQgetResult blocks as long as it takes
  while (PQisBusy(conn_) != 0) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(limit - clock::now()).count();
    if (left <= 0) {
      broken_ = true;
      stalled_ = limit < guard_;  // its own bound ran out, not the caller's deadline
      return false;
    }
    pollfd fd{PQsocket(conn_), POLLIN, 0};
    const int n = ::poll(&fd, 1, static_cast<int>(std::min<long long>(left, INT_MAX)));
    if (n < 0 && errno != EINTR) return true;  // PQgetResult reports the broken connection
    if (n > 0 && PQconsumeInput(conn_) == 0) return true;
  }
  return true;
}

PGresult* connection::collect() {
  const auto failed = [](PGresult* r) {
    const auto s = PQresultStatus(r);
    return s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK;
  };
  PGresult* kept = nullptr;
  const auto until = limit();
  for (;;) {
    if (!wait_readable(until)) {
      PQclear(kept);
      return nullptr;
    }
    PGresult* r = PQgetResult(conn_);
    if (!r) return kept;
    if (kept && failed(kept)) {
      PQclear(r);
    } else {
      PQclear(kept);
      kept = r;
    }
  }
}

PGresult* connection::await(bool sent, std::string_view verb, std::string_view sql) {
  if (!sent) return check(nullptr, verb, sql);
  PGresult* r = collect();
  if (!r && broken_)
    throw_db_failure(
        db_failure::timeout,
        fmt::format("{} `{}`: no answer before the request's deadline", verb, sql.substr(0, 200)),
        correlation_id_);
  return check(r, verb, sql);
}

PGresult* connection::check(PGresult* r, std::string_view verb, std::string_view sql) {
  const auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail(r, verb, sql);
  return r;
}

const std::string& connection::prepared_name(std::string_view sql, bool queue) {
  auto it = prepared_.find(sql);
  if (it != prepared_.end()) return it->second;
  std::string name = fmt::format("cleave_{}", prepared_.size());
  std::string text(sql);
  if (queue) {  // its answer comes with the pipeline's
    if (PQsendPrepare(conn_, name.c_str(), text.c_str(), 0, nullptr) == 0)
      fail(nullptr, "preparing", sql);
    queued_.push_back({text, true, next_ticket()});  // (the run it prepares for)
  } else {
    PQclear(!guarded()
                ? check(PQprepare(conn_, name.c_str(), text.c_str(), 0, nullptr), "preparing", sql)
                : await(PQsendPrepare(conn_, name.c_str(), text.c_str(), 0, nullptr) != 0,
                        "preparing", sql));
  }
  return prepared_.emplace(std::move(text), std::move(name)).first->second;
}

template <class Send>
auto connection::with_params(std::string_view sql, std::span<const sql_value> params, Send&& send) {
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
  return send(static_cast<int>(params.size()), values, lengths);
}

result_set connection::run(std::string_view sql, std::span<const sql_value> params,
                           result_format format) {
  const int binary = format == result_format::binary;
  if (pipelining_) {  // sent after the queued statements, in the same round trip
    const auto ticket = queue_run(sql, params, binary, true);
    sync();
    return std::move(*take(ticket));
  }
  const auto& name = prepared_name(sql, false);
  return with_params(sql, params, [&](int count, const char* const* values, const int* lengths) {
    if (!guarded())
      return result_set(
          check(PQexecPrepared(conn_, name.c_str(), count, values, lengths, nullptr, binary),
                "running", sql));
    return result_set(await(
        PQsendQueryPrepared(conn_, name.c_str(), count, values, lengths, nullptr, binary) != 0,
        "running", sql));
  });
}

void connection::enter_pipeline(std::string_view sql) {
  if (pipelining_) return;
  if (PQenterPipelineMode(conn_) == 0) fail(nullptr, "queueing", sql);
  pipelining_ = true;
}

std::uint64_t connection::queued_run(std::string_view sql, bool keep) {
  const auto ticket = next_ticket();
  queued_.push_back({std::string(sql), false, ticket, keep});
  ++queued_rows_;
  return ticket;
}

void connection::make_room() {
  // The answers wait in the server's socket buffer until read: a sync every so many keeps them
  // (and the server) from filling it. Taken before a statement is queued, never after: a
  // statement queued is sent with the sync of whoever queued it (COMMIT with commit's own).
  if (queued_rows_ >= max_queued) sync();
}

std::uint64_t connection::queue_run(std::string_view sql, std::span<const sql_value> params,
                                    int binary, bool keep) {
  make_room();
  enter_pipeline(sql);
  const auto& name = prepared_name(sql, true);
  with_params(sql, params, [&](int count, const char* const* values, const int* lengths) {
    if (PQsendQueryPrepared(conn_, name.c_str(), count, values, lengths, nullptr, binary) == 0)
      fail(nullptr, "queueing", sql);
    return 0;
  });
  return queued_run(sql, keep);
}

std::uint64_t connection::defer(std::string_view sql, std::span<const sql_value> params,
                                bool keep) {
  return queue_run(sql, params, 0, keep);
}

std::uint64_t connection::defer_plain(std::string_view sql, bool keep) {
  make_room();
  enter_pipeline(sql);
  const std::string text(sql);
  if (PQsendQueryParams(conn_, text.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0) == 0)
    fail(nullptr, "queueing", sql);
  return queued_run(sql, keep);
}

std::optional<result_set> connection::take(std::uint64_t ticket) {
  if (ticket >= rows_.size()) sync();
  const auto it =
      std::find_if(kept_.begin(), kept_.end(), [&](const auto& k) { return k.first == ticket; });
  if (it == kept_.end()) return std::nullopt;
  result_set r(it->second);
  kept_.erase(it);
  return r;
}

std::int64_t connection::rows_of(std::uint64_t ticket) {
  if (ticket >= rows_.size()) sync();
  return ticket < rows_.size() ? rows_[ticket] : 0;
}

void connection::forget_rows() noexcept {
  rows_.clear();
  failed_ticket_.reset();
  for (auto& k : kept_) PQclear(k.second);
  kept_.clear();
}

void connection::sync(std::uint64_t tolerate_from) {
  if (!pipelining_) return;
  PGresult* failed = nullptr;
  std::string failed_sql;
  const auto finish = [&] {
    pipelining_ = false;
    queued_.clear();
    queued_rows_ = 0;
  };
  const bool sent = PQpipelineSync(conn_) != 0;
  const auto until = limit();
  std::size_t i = 0;
  std::int64_t count = 0;
  PGresult* answer = nullptr;  // the answer of statement i, when it is kept
  bool tolerated = false;      // a statement from tolerate_from on failed first
  bool broke = !sent;
  // Each queued statement's answer (a result, then null), then the sync's. A statement after a
  // failed one is answered "aborted"; a preparation that did not succeed is forgotten.
  while (!broke) {
    if (!wait_readable(until)) {
      broke = true;
      break;
    }
    PGresult* r = PQgetResult(conn_);
    if (!r) {  // the end of one statement's answer
      // (More ends than statements, or none coming: the connection broke.)
      if (i >= queued_.size() || PQstatus(conn_) != CONNECTION_OK) {
        broke = true;
        break;
      }
      if (!queued_[i].prepare) rows_.push_back(count);
      if (answer) kept_.emplace_back(queued_[i].ticket, std::exchange(answer, nullptr));
      count = 0;
      ++i;
      continue;
    }
    const auto status = PQresultStatus(r);
    if (status == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      break;
    }
    const bool prepare = i < queued_.size() && queued_[i].prepare;
    const bool keep = i < queued_.size() && queued_[i].keep;
    const auto keep_or_clear = [&](PGresult* kept) {
      if (keep) {
        PQclear(answer);
        answer = kept;
      } else {
        PQclear(kept);
      }
    };
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) {
      if (!prepare) count = rows_affected(r);
      keep_or_clear(r);
      continue;
    }
    if (prepare) prepared_.erase(queued_[i].sql);
    if (!failed && status != PGRES_PIPELINE_ABORTED && i < queued_.size() &&
        queued_[i].ticket >= tolerate_from) {
      keep_or_clear(r);  // tolerated: the caller rolls back past it
      tolerated = true;
    } else if (!failed && !tolerated && status != PGRES_PIPELINE_ABORTED) {
      failed = r;
      failed_sql = i < queued_.size() ? queued_[i].sql : "";
      if (i < queued_.size() && !failed_ticket_) failed_ticket_ = queued_[i].ticket;
    } else {
      keep_or_clear(r);
    }
  }
  PQclear(answer);
  if (broke || PQexitPipelineMode(conn_) == 0) {
    // The connection broke or a deadline ran out: it cannot be used again.
    const bool lost = PQstatus(conn_) != CONNECTION_OK;
    broken_ = true;
    finish();
    if (failed || lost) fail(failed, "running", failed ? failed_sql : "queued statements");
    throw_db_failure(db_failure::timeout,
                     "queued statements: no answer before the request's deadline", correlation_id_);
  }
  finish();
  if (failed) fail(failed, "running", failed_sql);
}

bool connection::closed_by_server() {
  if (!healthy()) return true;
  if (pipelining_) return false;
  // An idle connection has nothing to read; a server that ended it sent its error and closed.
  pollfd fd{PQsocket(conn_), static_cast<short>(POLLIN | POLLRDHUP), 0};
  if (::poll(&fd, 1, 0) <= 0) return false;
  if ((fd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) return true;
  // (Read twice: the first may stop at the message, the second meets the end.)
  for (int i = 0; i < 2; ++i)
    if (PQconsumeInput(conn_) == 0 || PQstatus(conn_) != CONNECTION_OK) return true;
  return false;
}

void connection::discard_queued() noexcept {
  try {
    sync();
  } catch (...) {
    // Dropped with the transaction they belonged to.
  }
}

result_set connection::script(std::string_view sql) {
  if (pipelining_) sync();
  std::string text(sql);
  if (!guarded()) return result_set(check(PQexec(conn_, text.c_str()), "running", sql));
  return result_set(await(PQsendQuery(conn_, text.c_str()) != 0, "running", sql));
}

}  // namespace cleave::postgres::detail
