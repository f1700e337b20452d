#pragma once
// Routing: what the HTTP server does with one request, apart from sockets — authentication,
// dispatch to the buses, problem+json errors, the admin API, OpenAPI (openapi.cpp) and static
// files (static_files.cpp). Decoding is in decoding.hpp, metrics in metrics.hpp and the problem
// table in problems.hpp.

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <cleave/app/app.hpp>

#include "decoding.hpp"
#include "metrics.hpp"
#include "problems.hpp"

namespace cleave::http::detail {

// What router::vet() found out about a query request before the server parked it, so that
// handle() neither authenticates it nor reads its consistency headers again.
struct vetting {
  result<principal> who;  // the bearer token's principal (an empty one without tokens), or the 401
  // requested_consistency(); not read when `who` is an error (authentication comes first).
  result<std::optional<consistency>> wanted;
};

struct request {
  std::string method;  // upper case
  std::string target;  // path and query string
  std::string content_type;
  std::string authorization;
  std::string correlation_id;    // X-Correlation-Id; empty for a fresh one
  std::string peer;              // the client's IP address ("127.0.0.1", "::1"); empty if unknown
  std::string min_position;      // Cleave-Min-Position
  std::string consistency;       // Cleave-Consistency
  std::string timeout;           // Cleave-Timeout: milliseconds, shortening the request's deadline
  clock::time_point received{};  // when it arrived; handle() takes its own start when unset
  std::optional<std::string> idempotency_key;  // repeated fields joined by ", " (RFC 9110)
  std::string last_event_id;                   // Last-Event-ID (a live stream resumed)
  std::string body;
  // When a query's wait for views ends (set by the server for a read it parked).
  clock::time_point deadline = clock::time_point::max();
  std::optional<vetting> vetted;  // set by router::vet()
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

// The live streams (Server-Sent Events; live.hpp): a query's answers as they change, and the log.
enum class live_route { none, query, events };

// What GET /events asks for: the events after `after` (of `types` only, unless empty).
struct event_feed {
  position_token after;
  std::vector<std::string> types;
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
  // For a query request (GET, HEAD or POST /queries/...): authenticates it and reads its
  // consistency headers, once, keeping both in `r.vetted` for handle(). Returns the read to park
  // when the caller may ask that query and the headers ask for more than `eventual`; else nothing
  // (handle() answers it as it is). Reads no body and no database.
  std::optional<consistent_read> vet(request& r) const;
  metrics& stats() noexcept { return metrics_; }
  // Whether `r` asks for a live stream: GET /queries/{name}/live?… (its answers as the views it
  // reads move) or GET /events?after=…&types=… (the log). A live query's request is `r` with
  // `/live` taken out of its path: answered by handle() like any GET of the query.
  static live_route live(const request& r);
  static request without_live(const request& r);
  // GET /events: the feed it asks for (from `after`, else its Last-Event-ID, else the start),
  // or the refusal — the same gate as the admin API, then a malformed token or type list, or a
  // position the log cannot have issued (past its head). Reads the head: call it on a worker.
  std::variant<response, event_feed> open_feed(const request& r);
  // Whether answering `target` may involve a handler's database work (the buses, the admin
  // API), which runs on the workers; the rest (health, metrics, static files, the OpenAPI
  // document) is answered apart, so that busy workers never hold it.
  static bool uses_workers(std::string_view target);
  // Whether `r`, a query vet() has seen, may still wait in handle(): a strong or bounded read
  // checks its views again there. An eventual read does not wait, nor an at_least one whose
  // parked wait ended (its views are there, or its deadline passed).
  static bool may_wait(const request& r);

 private:
  response dispatch(const request& r, request_meta meta, std::string_view kind,
                    std::string_view name, std::string_view query_string);
  response openapi() const;  // in openapi.cpp
  response admin(const request& r, const std::string& path, request_meta& meta);
  response inboxes(const request& r, const std::string& path, request_meta& meta);
  // The admin API's gate (also the event feed's): authenticated; with tokens, the role "admin";
  // without, a loopback client. The refusal, or nothing.
  std::optional<response> admin_denied(const request& r, request_meta& meta) const;
  response static_file(const std::string& path, const std::string& correlation_id) const;
  response problem(int status, const error& e, const std::string& correlation_id) const;
  // The position the answer to query `name` reflects (read_your_writes::position_of); empty
  // when it cannot be read (the answer stands: the position is a hint for the next read).
  position_token answered_position(std::string_view name) const;
  // Who `r` comes from: the principal of its bearer token, an empty one when tokens are off.
  result<principal> credentials(const request& r) const;
  // 401 unless tokens are off or `r` carries a valid one, whose principal goes into `meta`.
  std::optional<response> authenticate(const request& r, request_meta& meta) const;

  app& app_;
  metrics metrics_;
  std::map<const message_ops*, json> query_schemas_;  // the JSON Schema of each query
};

// A fresh correlation id (16 hex digits).
std::string new_correlation_id();

// True for an IPv4 or IPv6 loopback address (IPv4-mapped included) in text form.
bool is_loopback(const std::string& address);

// The file under `root` that the URL path `path` names: percent-decoded, then refused when it is
// not under the root in every spelling (`//`, `.` and `..` segments, backslashes, NUL, symlinks
// leading out); a directory names its index.html. Empty when there is no such file.
std::optional<std::filesystem::path> resolve_static(const std::filesystem::path& root,
                                                    std::string_view path);

// The Content-Type of a static file, by its extension.
std::string_view media_type_of(const std::filesystem::path& file);

// The CPUs a cgroup CPU quota allows, rounded up, from cgroup v2's `cpu.max` text ("<quota>
// <period>"; v1's cfs quota and period in the same form). Empty for "max" (no quota) or text it
// cannot read.
std::optional<std::size_t> cpus_in_quota(std::string_view cpu_max);

// The CPUs this process may run on (cpus.cpp): its affinity mask, lowered to its cgroup's CPU
// quota when one is set; at least 1.
std::size_t usable_cpus();

}  // namespace cleave::http::detail
