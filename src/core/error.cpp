#include <cleave/core/error.hpp>

namespace cleave {

std::string_view to_string(errc category) noexcept {
  switch (category) {
    case errc::validation:
      return "validation";
    case errc::not_found:
      return "not_found";
    case errc::conflict:
      return "conflict";
    case errc::rejected:
      return "rejected";
    case errc::unavailable:
      return "unavailable";
    case errc::unauthorized:
      return "unauthorized";
    case errc::forbidden:
      return "forbidden";
    case errc::internal:
      return "internal";
    case errc::idempotency_key_reused:
      return "idempotency_key_reused";
    case errc::timeout:
      return "timeout";
    case errc::outcome_unknown:
      return "outcome_unknown";
  }
  return "internal";
}

std::optional<errc> errc_from_string(std::string_view name) noexcept {
  for (auto c : {errc::validation, errc::not_found, errc::conflict, errc::rejected,
                 errc::unavailable, errc::unauthorized, errc::forbidden, errc::internal,
                 errc::idempotency_key_reused, errc::timeout, errc::outcome_unknown})
    if (to_string(c) == name) return c;
  return std::nullopt;
}

std::string error::describe() const {
  std::string out{to_string(category)};
  out += ": ";
  out += message;
  for (const auto& f : fields) {
    // The message of a single-field error already names it (see invalid()).
    if (fields.size() == 1 && message == f.path + ": " + f.message) break;
    out += "; ";
    out += f.path.empty() ? std::string("(message)") : f.path;
    out += ": ";
    out += f.message;
  }
  return out;
}

error_exception::error_exception(cleave::error e)
    : std::runtime_error(e.describe()), error_(std::move(e)) {}

}  // namespace cleave
