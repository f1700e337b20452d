#pragma once
// The contexts handlers receive: write_context for commands, read_context for queries.
// A query handler gets only a read_context, which offers no way to write.

#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <cleave/core/detail/schedules.hpp>
#include <cleave/core/error.hpp>
#include <cleave/core/json.hpp>
#include <cleave/core/message.hpp>
#include <cleave/core/session.hpp>

namespace cleave {

namespace detail {

[[noreturn]] void throw_no_store();
[[noreturn]] void throw_row_mismatch(std::string_view column, std::string_view why);

template <class T>
sql_value to_sql(const T& v) {
  if constexpr (std::is_same_v<T, std::nullptr_t> || std::is_same_v<T, std::nullopt_t>) {
    return std::monostate{};
  } else if constexpr (is_optional<T>::value) {
    return v ? to_sql(*v) : sql_value{std::monostate{}};
  } else if constexpr (std::is_same_v<T, bool>) {
    return std::int64_t{v ? 1 : 0};
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<std::int64_t>(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    return static_cast<double>(v);
  } else if constexpr (described_enum<T>) {
    return enum_name(v);
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    return std::string_view(v);
  } else {
    static_assert(always_false<T>,
                  "a SQL parameter is a number, bool, string, enum, std::optional of those, or "
                  "nullptr; encode anything else yourself (e.g. cleave::to_json(x).dump())");
  }
}

// Reads one column into a member of a row shape.
template <class T>
void from_sql(const sql_value& v, std::string_view column, T& out) {
  const bool is_null = std::holds_alternative<std::monostate>(v);
  if constexpr (is_optional<T>::value) {
    if (is_null) {
      out.reset();
      return;
    }
    from_sql(v, column, out.emplace());
  } else if (is_null) {
    throw_row_mismatch(column, "is NULL but the field is not optional");
  } else if constexpr (std::is_same_v<T, bool> || std::is_integral_v<T>) {
    // A number that holds an integer fits, whatever type the database gave it (PostgreSQL's
    // sum() of bigints is numeric; SQLite's sum() of reals is real).
    std::int64_t value = 0;
    if (auto* i = std::get_if<std::int64_t>(&v)) {
      value = *i;
    } else if (auto* d = std::get_if<double>(&v)) {
      if (!(*d >= -0x1p63 && *d < 0x1p63) || std::trunc(*d) != *d)  // (NaN fails both)
        throw_row_mismatch(column,
                           "is a number with a fraction, or beyond 64 bits, not an integer: "
                           "round or cast it in the query");
      value = static_cast<std::int64_t>(*d);
    } else {
      throw_row_mismatch(column, "is not an integer");
    }
    if constexpr (std::is_same_v<T, bool>) {
      out = value != 0;
    } else {
      if (!std::in_range<T>(value)) throw_row_mismatch(column, "is out of the field's range");
      out = static_cast<T>(value);
    }
  } else if constexpr (std::is_floating_point_v<T>) {
    if (auto* d = std::get_if<double>(&v))
      out = static_cast<T>(*d);
    else if (auto* i = std::get_if<std::int64_t>(&v))
      out = static_cast<T>(*i);
    else
      throw_row_mismatch(column, "is not a number");
  } else if constexpr (std::is_same_v<T, std::string>) {
    auto* s = std::get_if<std::string_view>(&v);
    if (!s) throw_row_mismatch(column, "is not text");
    out.assign(*s);
  } else {
    // Enums, nested records, vectors and JSON are stored as JSON text or an enum's name.
    auto* s = std::get_if<std::string_view>(&v);
    if (!s) throw_row_mismatch(column, "is not text");
    json j;
    if constexpr (described_enum<T>) {
      j = std::string(*s);
    } else {
      auto parsed = parse_json(*s);
      if (!parsed) throw_row_mismatch(column, "is not valid JSON");
      j = std::move(*parsed);
    }
    json_decoder decoder(decode_mode::tolerant);
    decoder.read(j, out);
    if (!decoder.ok()) throw_row_mismatch(column, decoder.take_errors().front().message);
  }
}

// Maps a row onto T: a record's fields by column name, or a scalar from the first column.
template <class T>
T row_to(const row_view& row) {
  T out{};
  if constexpr (described<T>) {
    for_each_field<T>([&](const auto& f) {
      for (std::size_t c = 0; c < row.size(); ++c) {
        if (row.column_name(c) == f.name) {
          from_sql(row.get(c), f.name, out.*(f.member));
          return;
        }
      }
      using member_t = typename std::decay_t<decltype(f)>::value_type;
      if constexpr (is_required_v<member_t>) throw_row_mismatch(f.name, "is missing from the row");
    });
  } else {
    if (row.size() == 0) throw_row_mismatch("", "the row has no columns");
    from_sql(row.get(0), row.column_name(0), out);
  }
  return out;
}

}  // namespace detail

// What every handler context offers: the request's metadata and reads.
class read_context {
 public:
  // session may be null when no store is configured; reads then fail with errc::unavailable.
  read_context(read_session* session, const request_meta& meta) noexcept
      : session_(session), meta_(&meta) {}

  const std::string& correlation_id() const noexcept { return meta_->correlation_id; }
  const cleave::principal& principal() const noexcept { return meta_->principal; }
  clock::time_point deadline() const noexcept { return meta_->deadline; }
  const request_meta& meta() const noexcept { return *meta_; }

  // The first row of the result mapped onto T (a CLEAVE_RECORD or a scalar); not_found when the
  // statement returns no rows.
  template <class T, class... Args>
  result<T> one(std::string_view sql, const Args&... args) const {
    std::optional<T> out;
    const std::array<sql_value, sizeof...(Args)> params{detail::to_sql(args)...};
    run(sql, params, [&](const row_view& row) {
      if (!out) out.emplace(detail::row_to<T>(row));
    });
    if (!out) return not_found("no row matched");
    return std::move(*out);
  }

  // Every row of the result mapped onto T.
  template <class T, class... Args>
  std::vector<T> many(std::string_view sql, const Args&... args) const {
    std::vector<T> out;
    const std::array<sql_value, sizeof...(Args)> params{detail::to_sql(args)...};
    run(sql, params, [&](const row_view& row) { out.push_back(detail::row_to<T>(row)); });
    return out;
  }

 protected:
  void run(std::string_view sql, std::span<const sql_value> params, row_callback on_row) const {
    if (!session_) detail::throw_no_store();
    session_->query(sql, params, on_row);
  }

  read_session* session_;
  const request_meta* meta_;
};

// A command handler's context: one write transaction, and the event log inside it.
class write_context : public read_context {
 public:
  write_context(write_session* session, const request_meta& meta) noexcept
      : read_context(session, meta), write_(session) {}

  // The command's idempotency key; empty when the caller gave none.
  const std::string& command_id() const noexcept { return meta_->command_id; }

  // Runs one statement in the command's transaction; returns the number of rows changed. On
  // PostgreSQL the statement is queued and sent with the next one that needs an answer (a
  // query, a count read, at the latest COMMIT): its failure surfaces there, as the command's.
  template <class... Args>
  rows_changed exec(std::string_view sql, const Args&... args) {
    if (!write_) detail::throw_no_store();
    const std::array<sql_value, sizeof...(Args)> params{detail::to_sql(args)...};
    return {*write_, write_->defer(sql, params)};
  }

  // Appends an event to the log in the command's transaction: it commits or rolls back with the
  // state change. `stream` names the aggregate or entity the event belongs to. The stream's
  // version is the database's to give (on PostgreSQL in the insert itself, with the commit);
  // the overload with an expected version returns the version after the append.
  template <class E>
  void emit(std::string_view stream, const E& e) {
    append(stream, e, std::nullopt, false);
  }
  // As emit(stream, e), but a conflict (errc::conflict, thrown and turned into the command's
  // error) unless the stream's version is `expected_version` before the append.
  template <class E>
  std::uint64_t emit(std::string_view stream, const E& e, std::uint64_t expected_version) {
    return append(stream, e, expected_version, true);
  }
  // Appends an event that belongs to no stream.
  template <class E>
  void emit(const E& e) {
    append(std::string_view{}, e, std::nullopt, false);
  }

  // Schedules `command` to be sent at `when`, stored in this transaction: it exists only if this
  // command commits. The application's projector (the leader among processes) sends it once it is
  // due, with a command id made of the schedule's id, as this command's principal; one that comes
  // due while no process runs is sent late, never lost. `key` names it for cancel_schedule(); a
  // pending schedule with that key is replaced. Returns the key (a fresh one when none is given).
  template <class C>
  std::string schedule(std::chrono::system_clock::time_point when, const C& command,
                       std::string_view key = {}) {
    static_assert(
        cleave::command<C>,
        "schedule() takes a command: declare it with CLEAVE_COMMAND(type, \"name\", ...)");
    if (!write_) detail::throw_no_store();
    const json payload = to_json(command);
    return detail::insert_schedule(*write_, {.id = {},
                                             .key = key,
                                             .due_ms = detail::unix_ms_of(when),
                                             .command = info_of<C>().wire_name,
                                             .payload = &payload,
                                             .origin = {},
                                             .instance = {},
                                             .runs_as = &meta_->principal,
                                             .now_ms = detail::unix_now_ms()});
  }
  // The same, `after` from now.
  template <class C, class Rep, class Period>
  std::string schedule(std::chrono::duration<Rep, Period> after, const C& command,
                       std::string_view key = {}) {
    return schedule(std::chrono::system_clock::now() +
                        std::chrono::duration_cast<std::chrono::system_clock::duration>(after),
                    command, key);
  }
  // Cancels the pending schedule `key` in this transaction; false when none is pending (sent,
  // cancelled, or never made). Once this commits the command is never sent: sending it takes its
  // schedule out of the table in the scheduled command's own transaction.
  bool cancel_schedule(std::string_view key) {
    if (!write_) detail::throw_no_store();
    return detail::cancel_schedule(*write_, key);
  }

 private:
  template <class E>
  std::uint64_t append(std::string_view stream, const E& e, std::optional<std::uint64_t> expected,
                       bool version_wanted) {
    static_assert(event<E>,
                  "emit() takes an event: declare it with CLEAVE_EVENT(type, \"name\", fields...)");
    if (!write_) detail::throw_no_store();
    return write_->append(
        pending_event{info_of<E>().wire_name, stream, to_json(e), expected, version_wanted});
  }

  write_session* write_;
};

}  // namespace cleave
