#pragma once
// What the HTTP server does with one request, apart from sockets: routing, decoding, auth,
// dispatch to the buses, problem+json errors, OpenAPI, metrics, static files.

#include <atomic>
#include <chrono>
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
  std::string correlation_id;
  std::string min_position;  // Cleave-Min-Position
  std::string consistency;   // Cleave-Consistency
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
  // The response to `r`; never throws.
  response handle(const request& r);
  // The response for a request refused before it was read whole (413, 431, 415, 400, 503).
  response refuse(int status, errc category, std::string detail);
  // The query and consistency of `r` when it is an authorized query request whose consistency
  // headers are well-formed and ask for more than `eventual`; else nothing (handle() answers
  // it as it is). Reads no body and no database.
  std::optional<consistent_read> consistent_read_of(const request& r) const;
  metrics& stats() noexcept { return metrics_; }

 private:
  response dispatch(const request& r, std::string_view kind, std::string_view name,
                    std::string_view query_string);
  response openapi() const;
  response admin(const request& r, const std::string& path, request_meta& meta);
  response static_file(const std::string& path) const;
  response problem(int status, const error& e, const std::string& correlation_id) const;
  std::optional<response> authorize(const request& r, std::string_view name,
                                    request_meta& meta) const;

  app& app_;
  metrics metrics_;
  std::map<const message_ops*, json> query_schemas_;  // the JSON Schema of each query
};

// Parses JSON no deeper than max_depth; malformed or too deep text is a validation error.
result<json> parse_limited(std::string_view text, int max_depth);

// Decodes a URL query string into a JSON object, typed by the message's JSON Schema: integers,
// numbers and booleans must parse whole. A member the schema does not list stays a string (the
// strict decoder then names it).
result<json> query_to_json(std::string_view query, const json& schema);

// A fresh correlation id (16 hex digits).
std::string new_correlation_id();

}  // namespace cleave::http::detail
