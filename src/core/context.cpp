#include <cleave/core/context.hpp>

#include <fmt/format.h>

namespace cleave::detail {

void throw_no_store() {
  throw error_exception(error{errc::unavailable,
                              "no store is configured: give the bus a session source (for example "
                              "a SQLite or PostgreSQL store) before running SQL or emitting events",
                              {}});
}

void throw_row_mismatch(std::string_view column, std::string_view why) {
  throw error_exception(error{errc::internal, fmt::format("column '{}' {}", column, why), {}});
}

}  // namespace cleave::detail

namespace cleave {

std::string_view to_string(isolation level) noexcept {
  return level == isolation::serializable ? "serializable" : "read_committed";
}

position_token session_source::write(const request_meta& meta, isolation level,
                                     function_ref<bool(write_transaction&)> work) {
  write_scope tx(*this, meta, level);
  if (!work(*tx)) return {};  // (the scope rolls it back)
  return tx.commit();
}

}  // namespace cleave
