#include <cleave/store/detail/failure.hpp>

#include <string>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace cleave::detail {

namespace {

struct plain {
  errc category;
  std::string_view message;
};

plain plain_of(db_failure kind) {
  switch (kind) {
    case db_failure::unique:
      return {errc::conflict, "a row with this key already exists"};
    case db_failure::foreign_key:
      return {errc::rejected,
              "the change refers to a row that does not exist, or removes one that another "
              "row refers to"};
    case db_failure::check:
      return {errc::rejected, "a value breaks a rule of the schema"};
    case db_failure::not_null:
      return {errc::internal, "a required column was given no value"};
    case db_failure::raised:
      return {errc::rejected, "a rule of the database refused the change"};
    case db_failure::stream_version:
      return {errc::conflict, "the stream is at another version than expected"};
    case db_failure::serialization:
      return {errc::conflict, "a concurrent command changed what this one read; try again"};
    case db_failure::deadlock:
      return {errc::conflict, "this command and a concurrent one waited for each other; try again"};
    case db_failure::read_only:
      return {errc::internal, "a query cannot write"};
    case db_failure::read_only_database:
      return {errc::unavailable, "the database accepts no writes at the moment; try again"};
    case db_failure::timeout:
      return {errc::timeout, "the request's deadline passed while the database worked on it"};
    case db_failure::busy:
      return {errc::unavailable, "the database is busy; try again"};
    case db_failure::unavailable:
      return {errc::unavailable, "the database is unavailable"};
    case db_failure::nul_character:
      return {errc::validation, "a text value contains U+0000 (NUL), which cannot be stored"};
    case db_failure::multiple_statements:
      return {errc::internal,
              "one statement per exec or query: run each statement on its own (migrations and "
              "view schemas may hold several)"};
    case db_failure::placeholders:
      return {errc::internal, "a statement's placeholders are $1, $2, … and each needs a value"};
    case db_failure::other:
      break;
  }
  return {errc::internal, "the database could not run a statement"};
}

}  // namespace

void throw_deadline_passed(std::string_view when) {
  throw error_exception({errc::timeout, fmt::format("the request's deadline passed {}", when), {}});
}

void throw_db_failure(db_failure kind, std::string_view detail, std::string_view correlation_id,
                      std::string_view raised) {
  const auto [category, message] = plain_of(kind);
  const bool transient = kind == db_failure::serialization || kind == db_failure::deadlock;
  const auto level = transient                    ? spdlog::level::debug
                     : category == errc::internal ? spdlog::level::err
                     : category == errc::unavailable || category == errc::timeout
                         ? spdlog::level::warn
                         : spdlog::level::info;
  spdlog::log(level, "database: {} [correlation {}]", detail, correlation_id);
  std::string text((kind == db_failure::raised || kind == db_failure::stream_version) &&
                           !raised.empty()
                       ? raised
                       : message);
  if (category == errc::internal && !correlation_id.empty())
    text += fmt::format(" (correlation id {})", correlation_id);
  error e{category, std::move(text), {}};
  if (transient) throw transient_error(std::move(e));
  throw error_exception(std::move(e));
}

}  // namespace cleave::detail
