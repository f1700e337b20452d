// Problem metadata in one table (see problems.hpp): statuses, titles, `type` URIs per error
// category, and their OpenAPI descriptions.

#include "problems.hpp"

#include <algorithm>

#include <cleave/http/server.hpp>

namespace cleave::http {

namespace detail {

namespace {

// clang-format off
const problem_status statuses[] = {
    {400, "Bad Request",
     {{errc::validation, "/problems/validation"}, {{}, "/problems/malformed"}},
     "bad_request", "Malformed JSON or HTTP, nesting over the limit, a member that fails strict "
     "decoding or validate() (named in errors[].path), or a bad query string, consistency or "
     "position token.", {}, {}},
    {401, "Unauthorized", {{errc::unauthorized, "/problems/unauthorized"}},
     "unauthorized", "The bearer token is missing or unknown.", "WWW-Authenticate", "Bearer"},
    {403, "Forbidden", {{errc::forbidden, "/problems/forbidden"}},
     "forbidden", "The token's principal lacks the role required here; without tokens, the admin "
     "API answers only loopback clients.", {}, {}},
    {404, "Not Found",
     {{errc::not_found, "/problems/not-found"}, {{}, "/problems/unknown-message"}},
     "not_found", "The handler found nothing, or there is no such message, projection or route.",
     {}, {}},
    {405, "Method Not Allowed", {{{}, "/problems/method-not-allowed"}},
     "method_not_allowed", "Another method than this path takes (Allow lists them), or GET on a "
     "query with non-scalar members.", "Allow", {}},
    {409, "Conflict", {{errc::conflict, "/problems/conflict"}},
     "conflict", "A concurrent change won (a unique key, an expected version), or the projection "
     "is being rebuilt already.", {}, {}},
    {413, "Content Too Large", {{{}, "/problems/body-too-large"}},
     "body_too_large", "The body is over the limit (refused before it is read).", {}, {}},
    {415, "Unsupported Media Type", {{{}, "/problems/unsupported-media-type"}},
     "unsupported_media_type", "A body that is not application/json.", {}, {}},
    {422, "Unprocessable Content",
     {{errc::idempotency_key_reused, "/problems/idempotency-key-reused"},
      {errc::rejected, "/problems/rejected"}},
     "rejected", "A business rule refused the command, or its Idempotency-Key was used before for "
     "another message or payload.", {}, {}},
    {431, "Request Header Fields Too Large", {{{}, "/problems/headers-too-large"}},
     "headers_too_large", "The request headers are over the limit.", {}, {}},
    {500, "Internal Server Error", {{errc::internal, "/problems/internal"}},
     "internal", "Anything else: the body carries only the correlation id, the server's log the "
     "rest.", {}, {}},
    {503, "Service Unavailable",
     {{errc::timeout, "/problems/timeout"},
      {errc::outcome_unknown, "/problems/outcome-unknown"},
      {errc::unavailable, "/problems/unavailable"}},
     "unavailable", "The database is unavailable or read-only, a read's consistency could not be "
     "met in time, there are too many connections, the request's deadline passed "
     "(/problems/timeout), or a command's commit was cut off and its outcome could not be learned "
     "(/problems/outcome-unknown: retry with the same Idempotency-Key); retry after Retry-After "
     "seconds.", "Retry-After", "1"},
};
// clang-format on

}  // namespace

std::span<const problem_status> problem_statuses() {
  return statuses;
}

const problem_status& problem_status_of(int status) {
  const auto* row = std::find_if(std::begin(statuses), std::end(statuses),
                                 [&](const problem_status& s) { return s.status == status; });
  return row != std::end(statuses) ? *row : problem_status_of(500);
}

int status_of(errc category) {
  for (const auto& s : statuses)
    for (const auto& kind : s.kinds)
      if (kind.category == category) return s.status;
  return 500;
}

}  // namespace detail

std::string_view problem_type(int status, errc category) {
  const auto& kinds = detail::problem_status_of(status).kinds;
  const auto* kind = std::find_if(kinds.begin(), kinds.end(), [&](const detail::problem_kind& k) {
    return k.category == category;
  });
  return kind != kinds.end() ? kind->type : std::prev(kinds.end())->type;
}

}  // namespace cleave::http
