#pragma once
// What the HTTP server does with one request, apart from sockets: routing, decoding, auth,
// dispatch to the buses, problem+json errors, OpenAPI, metrics, static files.

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <cleave/app/app.hpp>

namespace cleave::http::detail {

struct request {
  std::string method;  // upper case
  std::string target;  // path and query string
  std::string content_type;
  std::string authorization;
  std::string correlation_id;  // X-Correlation-Id; empty for a fresh one
  std::string peer;            // the client's IP address ("127.0.0.1", "::1"); empty if unknown
  std::string min_position;    // Cleave-Min-Position
  std::string consistency;     // Cleave-Consistency
  std::optional<std::string> idempotency_key;  // repeated fields joined by ", " (RFC 9110)
  std::string body;
  // When a query's wait for views ends (set by the server for a read it parked).
  clock::time_point deadline = clock::time_point::max();
};

// What the server parks: a query that asks to read its writes (or fresh or strong views).
struct consistent_read {
  std::string name;  // the query's wire name
  cleave::consistency wanted;
};

struct response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Prometheus counters and latency histograms. Thread-safe.
class metrics {
 public:
  void record_request(const std::string& route, int status, std::chrono::nanoseconds took);
  void record_message(std::string_view kind, std::string_view name, std::string_view outcome);
  std::string render() const;

 private:
  static constexpr double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,   0.25,   0.5,   1,    2.5};
  struct histogram {
    std::vector<std::uint64_t> counts = std::vector<std::uint64_t>(std::size(buckets), 0);
    std::uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, std::uint64_t> requests_;
  std::map<std::string, histogram> latency_;
  std::map<std::tuple<std::string, std::string, std::string>, std::uint64_t> messages_;
};

class router {
 public:
  // Register every handler on `a` before making its router.
  explicit router(app& a);
  // The response to `r`; never throws. HEAD is answered as GET would be, body included: the
  // transport leaves the body out.
  response handle(const request& r);
  // The response for a request refused before it was read whole (413, 431, 415, 400, 503),
  // under `correlation_id` or a fresh one.
  response refuse(int status, errc category, std::string detail, std::string correlation_id = {});
  // The query and consistency of `r` when it is an authenticated query request whose
  // consistency headers are well-formed and ask for more than `eventual`; else nothing (handle()
  // answers it as it is). Reads no body and no database.
  std::optional<consistent_read> consistent_read_of(const request& r) const;
  metrics& stats() noexcept { return metrics_; }

 private:
  response dispatch(const request& r, request_meta meta, std::string_view kind,
                    std::string_view name, std::string_view query_string);
  response openapi() const;  // in openapi.cpp
  response admin(const request& r, const std::string& path, request_meta& meta);
  response static_file(const std::string& path, const std::string& correlation_id) const;
  response problem(int status, const error& e, const std::string& correlation_id) const;
  // 401 unless tokens are off or `r` carries a valid one, whose principal goes into `meta`.
  std::optional<response> authenticate(const request& r, request_meta& meta) const;

  app& app_;
  metrics metrics_;
  std::map<const message_ops*, json> query_schemas_;  // the JSON Schema of each query
};


// Decodes a URL query string into a JSON object, typed by the message's JSON Schema: integers,
// numbers and booleans must parse whole. A member the schema does not list stays a string (the
// strict decoder then names it).
result<json> query_to_json(std::string_view query, const json& schema);

// The first member of a query's JSON Schema that a query string cannot carry (an array, an
// object, or a member of any type), if any: GET on such a query is a 405 (POST it instead).
std::optional<std::string> non_scalar_member(const json& schema);

// A fresh correlation id (16 hex digits).
std::string new_correlation_id();
// The client's X-Correlation-Id when it is 1 to 64 visible ASCII characters (it is logged, echoed
// and stored with outcomes); else empty, for a fresh one.
std::string accepted_correlation_id(std::string_view given);

// The key an Idempotency-Key field carries, bare or as a structured-field string ("\"…\"",
// RFC 8941); malformed quoting is a validation error. command_id_for() checks the key itself.
result<std::string> parse_idempotency_key(std::string_view field);

// `s` with %XX sequences decoded (and `+` as a space when `plus_is_space`, as in query
// strings); empty when a % is not followed by two hex digits.
std::optional<std::string> percent_decode(std::string_view s, bool plus_is_space);

// Equality whose time depends only on the length of `given`, not on where it differs from
// `secret`.
bool same_secret(std::string_view given, std::string_view secret) noexcept;

// True for an IPv4 or IPv6 loopback address (IPv4-mapped included) in text form.
bool is_loopback(const std::string& address);

// The file under `root` that the URL path `path` names: percent-decoded, then refused when it is
// not under the root in every spelling (`//`, `.` and `..` segments, backslashes, NUL, symlinks
// leading out); a directory names its index.html. Empty when there is no such file.
std::optional<std::filesystem::path> resolve_static(const std::filesystem::path& root,
                                                    std::string_view path);

// The Content-Type of a static file, by its extension.
std::string_view media_type_of(const std::filesystem::path& file);

}  // namespace cleave::http::detail
