#pragma once
// Decoding what a request carries, apart from its JSON body: percent-encoding, query strings
// (typed by a query's JSON Schema), and the header fields the router reads — Authorization
// (bearer tokens), Content-Type, Cleave-Consistency and Cleave-Min-Position, Idempotency-Key,
// X-Correlation-Id. Pure functions: no I/O, no app.

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <cleave/app/app.hpp>

namespace cleave::http::detail {

// `s` with %XX sequences decoded (and `+` as a space when `plus_is_space`, as in query
// strings); empty when a % is not followed by two hex digits.
std::optional<std::string> percent_decode(std::string_view s, bool plus_is_space);

// Decodes a URL query string into a JSON object, typed by the message's JSON Schema: integers,
// numbers and booleans must parse whole. A member the schema does not list stays a string (the
// strict decoder then names it).
result<json> query_to_json(std::string_view query, const json& schema);

// The first member of a query's JSON Schema that a query string cannot carry (an array, an
// object, or a member of any type), if any: GET on such a query is a 405 (POST it instead).
std::optional<std::string> non_scalar_member(const json& schema);

// The consistency a query's headers ask for (Cleave-Min-Position wins, as at_least=<token>;
// Cleave-Consistency is eventual | strong | bounded=<ms> | at_least=<token>): nothing when
// neither is set, a validation error when the one that counts is malformed.
result<std::optional<consistency>> requested_consistency(std::string_view min_position,
                                                         std::string_view consistency_field);

// The key an Idempotency-Key field carries, bare or as a structured-field string ("\"…\"",
// RFC 8941); malformed quoting is a validation error. command_id_for() checks the key itself.
result<std::string> parse_idempotency_key(std::string_view field);

// The client's X-Correlation-Id when it is 1 to 64 visible ASCII characters (it is logged, echoed
// and stored with outcomes); else empty, for a fresh one.
std::string accepted_correlation_id(std::string_view given);

// Whether a Content-Type is application/json (parameters aside; media types are
// case-insensitive, RFC 9110 8.3.1).
bool is_json(std::string_view content_type);

// The principal an Authorization field's bearer token stands for among `tokens` (the scheme is
// case-insensitive; the token must match one whole). errc::unauthorized when there is no bearer
// token ("a bearer token is required") or it matches none ("the bearer token is not valid").
result<principal> bearer_principal(std::string_view authorization,
                                   const std::map<std::string, principal>& tokens);

// Equality whose time depends only on the length of `given`, not on where it differs from
// `secret`.
bool same_secret(std::string_view given, std::string_view secret) noexcept;

}  // namespace cleave::http::detail
