// Decoding what a request carries (see decoding.hpp): percent-encoding, query strings and the
// header fields the router reads.

#include "decoding.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>

#include <fmt/format.h>

namespace cleave::http::detail {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::optional<std::string> percent_decode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+' && plus_is_space) {
      out += ' ';
    } else if (s[i] == '%') {
      unsigned v = 0;
      if (i + 2 >= s.size()) return std::nullopt;
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      if (ec != std::errc{} || p != s.data() + i + 3) return std::nullopt;
      out += static_cast<char>(v);
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

result<json> query_to_json(std::string_view query, const json& schema) {
  json out = json::object();
  const auto& properties = schema.contains("properties") ? schema["properties"] : json::object();
  while (!query.empty()) {
    const auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (pair.empty()) continue;
    const auto eq = pair.find('=');
    const auto decoded_key = percent_decode(pair.substr(0, eq), true);
    const auto decoded_value = eq == std::string_view::npos
                                   ? std::optional<std::string>(std::string{})
                                   : percent_decode(pair.substr(eq + 1), true);
    const std::string key = decoded_key.value_or(std::string(pair.substr(0, eq)));
    if (!decoded_key || !decoded_value) return invalid(key, "malformed percent-encoding");
    const std::string& value = *decoded_value;
    if (out.contains(key)) return invalid(key, "given more than once");
    const std::string type = properties.contains(key) ? properties[key].value("type", "") : "";
    if (type == "integer") {
      std::int64_t v = 0;
      auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
      if (ec != std::errc{} || p != value.data() + value.size() || value.empty())
        return invalid(key, fmt::format("expected an integer, got '{}'", value));
      out[key] = v;
    } else if (type == "number") {
      char* end = nullptr;
      const double v = std::strtod(value.c_str(), &end);
      if (value.empty() || end != value.c_str() + value.size())
        return invalid(key, fmt::format("expected a number, got '{}'", value));
      out[key] = v;
    } else if (type == "boolean") {
      if (value != "true" && value != "false")
        return invalid(key, fmt::format("expected true or false, got '{}'", value));
      out[key] = value == "true";
    } else {
      out[key] = value;
    }
  }
  return out;
}

std::optional<std::string> non_scalar_member(const json& schema) {
  for (const auto& [member, s] : schema["properties"].items()) {
    const auto type = s.value("type", "");
    if (type == "array" || type == "object" || !s.contains("type")) return member;
  }
  return std::nullopt;
}

result<std::optional<consistency>> requested_consistency(std::string_view min_position,
                                                         std::string_view consistency_field) {
  if (!min_position.empty()) {
    // Read-your-writes: the same as Cleave-Consistency: at_least=<token>.
    auto token = position_token::parse(min_position);
    if (!token) return std::unexpected(token.error());
    return at_least(*token);
  }
  if (consistency_field.empty()) return std::nullopt;
  // A query reading views waits for them (cleave::read_your_writes); one reading the write
  // tables is current already.
  auto wanted = parse_consistency(consistency_field);
  if (!wanted) return std::unexpected(wanted.error());
  return *wanted;
}

result<std::string> parse_idempotency_key(std::string_view field) {
  if (!field.starts_with('"')) return std::string(field);
  const auto malformed = [] {
    return fail(errc::validation, "the Idempotency-Key header is not a well-formed string");
  };
  if (field.size() < 2 || !field.ends_with('"')) return malformed();
  const auto inner = field.substr(1, field.size() - 2);
  std::string key;
  for (std::size_t i = 0; i < inner.size(); ++i) {
    if (inner[i] == '"') return malformed();
    if (inner[i] == '\\' && (++i == inner.size() || (inner[i] != '"' && inner[i] != '\\')))
      return malformed();
    key += inner[i];
  }
  return key;
}

std::string accepted_correlation_id(std::string_view given) {
  if (given.empty() || given.size() > 64) return {};
  for (const char c : given)
    if (c < '!' || c > '~') return {};
  return std::string(given);
}

bool is_json(std::string_view content_type) {
  return iequals(trim(content_type.substr(0, content_type.find(';'))), "application/json");
}

result<principal> bearer_principal(std::string_view authorization,
                                   const std::map<std::string, principal>& tokens) {
  // The scheme is case-insensitive (RFC 9110 11.1).
  const std::string_view credentials = trim(authorization);
  const auto space = credentials.find(' ');
  if (space == std::string_view::npos || !iequals(credentials.substr(0, space), "bearer"))
    return fail(errc::unauthorized, "a bearer token is required");
  const std::string_view token = trim(credentials.substr(space + 1));
  // Every configured token is compared, each in constant time: a map lookup keyed by the secret
  // would leak through its timing how much of a guess was right.
  const principal* found = nullptr;
  for (const auto& [secret, who] : tokens)
    if (same_secret(token, secret)) found = &who;
  if (!found) return fail(errc::unauthorized, "the bearer token is not valid");
  return *found;
}

bool same_secret(std::string_view given, std::string_view secret) noexcept {
  if (secret.empty()) return given.empty();
  unsigned diff = given.size() != secret.size() ? 1u : 0u;
  for (std::size_t i = 0; i < given.size(); ++i)
    diff |= static_cast<unsigned char>(given[i]) ^
            static_cast<unsigned char>(secret[i % secret.size()]);
  return diff == 0;
}

}  // namespace cleave::http::detail
