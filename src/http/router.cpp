#include "router.hpp"

#include <cleave/http/server.hpp>

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace cleave::http {

std::string_view problem_type(int status, errc category) {
  switch (status) {
    case 400:
      return category == errc::validation ? "/problems/validation" : "/problems/malformed";
    case 401:
      return "/problems/unauthorized";
    case 403:
      return "/problems/forbidden";
    case 404:
      return category == errc::not_found ? "/problems/not-found" : "/problems/unknown-message";
    case 405:
      return "/problems/method-not-allowed";
    case 409:
      return "/problems/conflict";
    case 413:
      return "/problems/body-too-large";
    case 415:
      return "/problems/unsupported-media-type";
    case 422:
      return category == errc::idempotency_key_reused ? "/problems/idempotency-key-reused"
                                                      : "/problems/rejected";
    case 431:
      return "/problems/headers-too-large";
    case 503:
      return "/problems/unavailable";
    default:
      return "/problems/internal";
  }
}

namespace detail {

namespace {

int status_of(errc category) {
  switch (category) {
    case errc::validation:
      return 400;
    case errc::not_found:
      return 404;
    case errc::conflict:
      return 409;
    case errc::rejected:
      return 422;
    case errc::unavailable:
      return 503;
    case errc::unauthorized:
      return 401;
    case errc::forbidden:
      return 403;
    case errc::internal:
      return 500;
    case errc::idempotency_key_reused:
      return 422;
  }
  return 500;
}

std::string_view title_of(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Content";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    default:
      return "Internal Server Error";
  }
}

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

// Media types are case-insensitive (RFC 9110 8.3.1).
bool is_json(std::string_view content_type) {
  return iequals(trim(content_type.substr(0, content_type.find(';'))), "application/json");
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

bool same_secret(std::string_view given, std::string_view secret) noexcept {
  if (secret.empty()) return given.empty();
  unsigned diff = given.size() != secret.size() ? 1u : 0u;
  for (std::size_t i = 0; i < given.size(); ++i)
    diff |= static_cast<unsigned char>(given[i]) ^
            static_cast<unsigned char>(secret[i % secret.size()]);
  return diff == 0;
}

bool is_loopback(const std::string& address) {
  unsigned char v4[4], v6[16];
  if (::inet_pton(AF_INET, address.c_str(), v4) == 1) return v4[0] == 127;
  if (::inet_pton(AF_INET6, address.c_str(), v6) != 1) return false;
  constexpr unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::equal(v6, v6 + 12, mapped)) return v6[12] == 127;
  return std::all_of(v6, v6 + 15, [](unsigned char b) { return b == 0; }) && v6[15] == 1;
}

namespace {

// The consistency the headers ask for (Cleave-Min-Position wins): nothing when neither is set,
// a validation error when one is malformed.
result<std::optional<consistency>> requested_consistency(const request& r) {
  if (!r.min_position.empty()) {
    // Read-your-writes: the same as Cleave-Consistency: at_least=<token>.
    auto token = position_token::parse(r.min_position);
    if (!token) return std::unexpected(token.error());
    return at_least(*token);
  }
  if (r.consistency.empty()) return std::nullopt;
  // eventual | strong | bounded=<ms> | at_least=<token>: a query reading views waits for them
  // (cleave::read_your_writes); one reading the write tables is current already.
  auto wanted = parse_consistency(r.consistency);
  if (!wanted) return std::unexpected(wanted.error());
  return *wanted;
}

}  // namespace

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

std::string new_correlation_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{:016x}", rng());
}

void metrics::record_request(const std::string& route, int status, std::chrono::nanoseconds took) {
  const double seconds = std::chrono::duration<double>(took).count();
  std::lock_guard lock(mutex_);
  ++requests_[{route, status}];
  auto& h = latency_[route];
  for (std::size_t i = 0; i < std::size(buckets); ++i)
    if (seconds <= buckets[i]) ++h.counts[i];
  ++h.count;
  h.sum += seconds;
}

void metrics::record_message(std::string_view kind, std::string_view name,
                             std::string_view outcome) {
  std::lock_guard lock(mutex_);
  ++messages_[{std::string(kind), std::string(name), std::string(outcome)}];
}

namespace {

// The HELP and TYPE lines that open a Prometheus metric family.
void metric_family(std::string& out, std::string_view name, std::string_view type,
                   std::string_view help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

}  // namespace

std::string metrics::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  metric_family(out, "cleave_http_requests_total", "counter", "HTTP requests by route and status.");
  for (const auto& [key, n] : requests_)
    out += fmt::format("cleave_http_requests_total{{route=\"{}\",status=\"{}\"}} {}\n", key.first,
                       key.second, n);
  metric_family(out, "cleave_http_request_duration_seconds", "histogram",
                "HTTP request latency by route.");
  for (const auto& [route, h] : latency_) {
    for (std::size_t i = 0; i < std::size(buckets); ++i)
      out +=
          fmt::format("cleave_http_request_duration_seconds_bucket{{route=\"{}\",le=\"{}\"}} {}\n",
                      route, buckets[i], h.counts[i]);
    out +=
        fmt::format("cleave_http_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {}\n",
                    route, h.count);
    out +=
        fmt::format("cleave_http_request_duration_seconds_sum{{route=\"{}\"}} {}\n", route, h.sum);
    out += fmt::format("cleave_http_request_duration_seconds_count{{route=\"{}\"}} {}\n", route,
                       h.count);
  }
  metric_family(out, "cleave_messages_total", "counter",
                "Commands and queries by name and outcome.");
  for (const auto& [key, n] : messages_)
    out += fmt::format("cleave_messages_total{{kind=\"{}\",name=\"{}\",outcome=\"{}\"}} {}\n",
                       std::get<0>(key), std::get<1>(key), std::get<2>(key), n);
  return out;
}

router::router(app& a) : app_(a) {
  // Built once: GET requests type their query strings by them.
  for (const auto* ops : a.queries().handled_ops()) query_schemas_.emplace(ops, ops->schema());
}

response router::problem(int status, const error& e, const std::string& correlation_id) const {
  json body{{"type", problem_type(status, e.category)},
            {"title", title_of(status)},
            {"status", status},
            {"detail", e.message}};
  if (e.category == errc::internal && status == 500) {
    if (!e.message.starts_with("internal error"))  // the bus has logged (and hidden) the rest
      spdlog::error("internal error [correlation {}]: {}", correlation_id, e.message);
    body["detail"] = fmt::format("internal error (correlation id {})", correlation_id);
  }
  if (!e.fields.empty()) {
    json errors = json::array();
    for (const auto& f : e.fields) errors.push_back({{"path", f.path}, {"message", f.message}});
    body["errors"] = std::move(errors);
  }
  body["correlation_id"] = correlation_id;
  response r{status, "application/problem+json", body.dump(), {}};
  r.headers.emplace_back("X-Correlation-Id", correlation_id);
  if (status == 503) r.headers.emplace_back("Retry-After", "1");
  if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

response router::refuse(int status, errc category, std::string detail, std::string correlation_id) {
  if (correlation_id.empty()) correlation_id = new_correlation_id();
  return problem(status, error{category, std::move(detail), {}}, correlation_id);
}

std::optional<response> router::authenticate(const request& r, request_meta& meta) const {
  const auto& cfg = app_.config();
  if (cfg.tokens.empty()) return std::nullopt;
  // The scheme is case-insensitive (RFC 9110 11.1).
  const std::string_view credentials = trim(r.authorization);
  const auto space = credentials.find(' ');
  if (space == std::string_view::npos || !iequals(credentials.substr(0, space), "bearer"))
    return problem(401, {errc::unauthorized, "a bearer token is required", {}},
                   meta.correlation_id);
  const std::string_view token = trim(credentials.substr(space + 1));
  // Every configured token is compared, each in constant time: a map lookup keyed by the secret
  // would leak through its timing how much of a guess was right.
  const principal* found = nullptr;
  for (const auto& [secret, who] : cfg.tokens)
    if (same_secret(token, secret)) found = &who;
  if (!found)
    return problem(401, {errc::unauthorized, "the bearer token is not valid", {}},
                   meta.correlation_id);
  meta.principal = *found;
  return std::nullopt;
}

response router::dispatch(const request& r, request_meta meta, std::string_view kind,
                          std::string_view name, std::string_view query_string) {
  const bool is_command = kind == "commands";
  const message_ops* ops = is_command ? app_.commands().find(name) : app_.queries().find(name);
  if (!ops)
    return problem(404,
                   {errc::validation,
                    fmt::format("unknown {} '{}'", is_command ? "command" : "query", name),
                    {}},
                   meta.correlation_id);
  json body;
  if (r.method == "GET") {
    if (is_command)
      return problem(405, {errc::validation, "commands are sent with POST", {}},
                     meta.correlation_id);
    const json& schema = query_schemas_.at(ops);
    if (auto member = non_scalar_member(schema))
      return problem(405,
                     {errc::validation,
                      fmt::format("'{}' has a non-scalar member '{}': use POST", name, *member),
                      {}},
                     meta.correlation_id);
    auto q = query_to_json(query_string, schema);
    if (!q) return problem(400, q.error(), meta.correlation_id);
    body = std::move(*q);
  } else {
    if (!r.body.empty() && !is_json(r.content_type))
      return problem(415, {errc::validation, "the body must be application/json", {}},
                     meta.correlation_id);
    auto parsed = r.body.empty() ? result<json>(json::object())
                                 : parse_json_strict(r.body, app_.config().max_json_depth);
    if (!parsed) return problem(400, parsed.error(), meta.correlation_id);
    body = std::move(*parsed);
  }
  // Roles are checked by the buses (cleave::authorization), as for every other caller.

  // A query has no effect to repeat: its Idempotency-Key is ignored.
  if (is_command && r.idempotency_key) {
    auto key = parse_idempotency_key(*r.idempotency_key);
    auto id = key ? command_id_for(meta.principal, *key) : std::unexpected(key.error());
    if (!id) return problem(400, id.error(), meta.correlation_id);
    meta.command_id = std::move(*id);
  }
  auto wanted = requested_consistency(r);
  if (!wanted) return problem(400, wanted.error(), meta.correlation_id);
  if (*wanted) meta.consistency = **wanted;
  meta.deadline = r.deadline;
  std::optional<std::string> replay_of;
  auto outcome = is_command ? app_.commands().send_json(name, body, meta, &replay_of)
                            : app_.queries().ask_json(name, body, meta);
  metrics_.record_message(is_command ? "command" : "query", name,
                          outcome ? "ok" : to_string(outcome.error().category));
  // A replay answers as the first request did: a refusal with that request's correlation id.
  if (replay_of && !replay_of->empty()) meta.correlation_id = *replay_of;
  auto res = [&] {
    if (!outcome)
      return problem(status_of(outcome.error().category), outcome.error(), meta.correlation_id);
    const std::string position = outcome->position.to_string();
    response ok{200,
                "application/json",
                json{{"result", outcome->result}, {"position", position}}.dump(),
                {}};
    if (!position.empty()) ok.headers.emplace_back("Cleave-Position", position);
    return ok;
  }();
  if (replay_of) res.headers.emplace_back("Idempotent-Replayed", "true");
  return res;
}

std::optional<consistent_read> router::consistent_read_of(const request& r) const {
  constexpr std::string_view prefix = "/queries/";
  auto path = std::string_view(r.target);
  path = path.substr(0, path.find('?'));
  if ((r.method != "GET" && r.method != "HEAD" && r.method != "POST") || !path.starts_with(prefix))
    return std::nullopt;
  const auto name = path.substr(prefix.size());
  request_meta meta;
  if (authenticate(r, meta)) return std::nullopt;
  // A caller without the role is answered (403) at once, not after a wait.
  const auto& roles = app_.config().roles;
  if (auto role = roles.find(std::string(name));
      role != roles.end() && !meta.principal.has_role(role->second))
    return std::nullopt;
  auto wanted = requested_consistency(r);
  if (!wanted || !*wanted || (*wanted)->required == consistency::level::eventual)
    return std::nullopt;
  return consistent_read{std::string(name), **wanted};
}

response router::static_file(const std::string& path, const std::string& correlation_id) const {
  const auto file = resolve_static(app_.config().static_dir, path);
  if (!file) return problem(404, {errc::not_found, "no such page", {}}, correlation_id);
  std::ifstream in(*file, std::ios::binary);
  if (!in) return problem(404, {errc::not_found, "no such page", {}}, correlation_id);
  std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return {200, std::string(media_type_of(*file)), std::move(body), {}};
}

namespace {

// The read side's lag as Prometheus gauges, per projection and per replica.
std::string lag_metrics(app& a) {
  std::string out;
  const auto all = projections_json(a.projections());
  auto per_projection = [&](std::string_view name, std::string_view help, const char* field) {
    metric_family(out, name, "gauge", help);
    for (const auto& p : all) {
      const auto& v = p[field];
      out += fmt::format("{}{{projection=\"{}\"}} {}\n", name, p["name"].get<std::string>(),
                         v.is_number_float() ? fmt::format("{}", v.get<double>()) : v.dump());
    }
  };
  per_projection("cleave_projection_lag_events",
                 "Events committed that a projection has not applied.", "lag_events");
  per_projection("cleave_projection_lag_seconds",
                 "Age of the oldest event a projection has not applied.", "lag_seconds");
  per_projection("cleave_projection_dead_letters", "Events parked because their handler failed.",
                 "dead_letters");
  const auto replicas = a.store().replicas();
  if (replicas.empty()) return out;
  auto per_replica = [&](std::string_view name, std::string_view help, auto value) {
    metric_family(out, name, "gauge", help);
    for (const auto& r : replicas)
      out += fmt::format("{}{{replica=\"{}\"}} {}\n", name, r.url, value(r));
  };
  per_replica("cleave_replica_lag_seconds",
              "How long ago the primary wrote the oldest WAL a replica lacks.",
              [](const replica_status& r) { return r.lag_seconds; });
  per_replica("cleave_replica_lag_bytes",
              "WAL the primary has written that a replica has not replayed.",
              [](const replica_status& r) { return r.lag_bytes; });
  return out;
}

}  // namespace

// The admin API (the role "admin" when tokens are configured):
//   GET  /admin/projections                          every projection, with its rebuild job
//   GET  /admin/projections/{name}/dead-letters
//   POST /admin/projections/{name}/replay-dead-letters
//   POST /admin/projections/{name}/rebuild[?verify=true]   202; progress in the listing
response router::admin(const request& r, const std::string& path, request_meta& meta) {
  auto& p = app_.projections();
  const auto ok = [](json body, int status = 200) {
    return response{status, "application/json", body.dump(), {}};
  };
  constexpr std::string_view prefix = "/admin/projections";
  if (path == prefix) {
    if (r.method != "GET")
      return problem(405, {errc::validation, "use GET", {}}, meta.correlation_id);
    auto list = projections_json(p);
    const auto jobs = app_.rebuild_jobs();
    for (auto& item : list) {
      auto job = jobs.find(item["name"].get<std::string>());
      if (job == jobs.end()) continue;
      item["rebuild"] = {{"running", job->second.running},
                         {"applied", job->second.progress.applied},
                         {"total", job->second.progress.total},
                         {"swapped", job->second.progress.swapped},
                         {"differences", job->second.progress.differences},
                         {"error", job->second.error}};
    }
    return ok({{"projections", list}, {"replicas", replicas_json(app_.store())}});
  }
  if (!path.starts_with(std::string(prefix) + "/"))
    return problem(404, {errc::not_found, "no such admin route", {}}, meta.correlation_id);
  const std::string rest = path.substr(prefix.size() + 1);
  const auto slash = rest.find('/');
  const std::string name = rest.substr(0, slash);
  const std::string action = slash == std::string::npos ? "" : rest.substr(slash + 1);
  const auto names = p.names();
  if (std::find(names.begin(), names.end(), name) == names.end())
    return problem(404, {errc::not_found, fmt::format("no projection named '{}'", name), {}},
                   meta.correlation_id);
  if (action == "dead-letters" && r.method == "GET") {
    json out = json::array();
    for (const auto& d : p.dead_letters(name))
      out.push_back({{"position", d.position.to_string()},
                     {"type", d.type},
                     {"payload", d.payload},
                     {"error", d.error}});
    return ok({{"dead_letters", out}});
  }
  if (action == "replay-dead-letters" && r.method == "POST") {
    const auto replayed = p.replay_dead_letters(name);
    return ok({{"replayed", replayed}, {"still_parked", p.dead_letters(name).size()}});
  }
  if (action == "rebuild" && r.method == "POST") {
    const bool verify = r.target.find("verify=true") != std::string::npos;
    if (!app_.start_rebuild(name, verify))
      return problem(409, {errc::conflict, fmt::format("'{}' is being rebuilt already", name), {}},
                     meta.correlation_id);
    return ok({{"started", name}}, 202);
  }
  return problem(404, {errc::not_found, "no such admin route", {}}, meta.correlation_id);
}

response router::handle(const request& r) {
  if (r.method == "HEAD") {
    request get = r;
    get.method = "GET";
    return handle(get);
  }
  const auto start = std::chrono::steady_clock::now();
  const auto q = r.target.find('?');
  const std::string path = r.target.substr(0, q);
  const std::string_view query_string =
      q == std::string::npos ? std::string_view{} : std::string_view(r.target).substr(q + 1);
  std::string route = path;
  request_meta meta;
  meta.correlation_id = r.correlation_id.empty() ? new_correlation_id() : r.correlation_id;
  const std::string& correlation_id = meta.correlation_id;
  response res;
  try {
    auto allow = [&](std::string_view methods) {
      res = problem(405, {errc::validation, fmt::format("{} is not allowed here", r.method), {}},
                    correlation_id);
      res.headers.emplace_back("Allow", std::string(methods));
    };
    if (path.starts_with("/commands/") || path.starts_with("/queries/")) {
      const bool is_command = path.starts_with("/commands/");
      const std::string_view name = std::string_view(path).substr(is_command ? 10 : 9);
      route = is_command ? "/commands/{name}" : "/queries/{name}";
      if (r.method != "POST" && (is_command || r.method != "GET"))
        allow(is_command ? "POST" : "GET, HEAD, POST");
      else if (auto denied = authenticate(r, meta))  // before the name or the body is looked at
        res = std::move(*denied);
      else
        res = dispatch(r, meta, is_command ? "commands" : "queries", name, query_string);
    } else if (path == "/health") {
      if (r.method != "GET")
        allow("GET, HEAD");
      else
        res = {200,
               "application/json",
               json{{"status", "ok"}, {"head", app_.store().head().to_string()}}.dump(),
               {}};
    } else if (path == "/metrics") {
      if (r.method != "GET")
        allow("GET, HEAD");
      else
        res = {200, "text/plain; version=0.0.4", metrics_.render() + lag_metrics(app_), {}};
    } else if (path.starts_with("/admin/")) {
      route = "/admin";
      const bool open = app_.config().tokens.empty();
      if (auto denied = authenticate(r, meta))
        res = std::move(*denied);
      else if (open && !is_loopback(r.peer))
        res = problem(403,
                      {errc::forbidden,
                       "the admin API answers only loopback clients while no tokens are configured",
                       {}},
                      correlation_id);
      else if (!open && !meta.principal.has_role("admin"))
        res = problem(403, {errc::forbidden, "the admin API requires the role 'admin'", {}},
                      correlation_id);
      else
        res = admin(r, path, meta);
    } else if (path == "/openapi.json") {
      if (r.method != "GET")
        allow("GET, HEAD");
      else
        res = openapi();
    } else if (r.method == "GET") {
      route = "static";
      res = static_file(path, correlation_id);
    } else {
      route = "other";
      res = problem(404, {errc::validation, "no such route", {}}, correlation_id);
    }
  } catch (const error_exception& e) {
    res = problem(status_of(e.error().category), e.error(), correlation_id);
  } catch (const std::exception& e) {
    res = problem(500, {errc::internal, e.what(), {}}, correlation_id);
  }
  if (res.status < 400) res.headers.emplace_back("X-Correlation-Id", correlation_id);
  metrics_.record_request(route, res.status, std::chrono::steady_clock::now() - start);
  return res;
}

}  // namespace detail
}  // namespace cleave::http
