#include "router.hpp"

#include <cleave/http/server.hpp>

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
      return "/problems/rejected";
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

std::string percent_decode(std::string_view s, bool& ok) {
  std::string out;
  ok = true;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%') {
      unsigned v = 0;
      if (i + 2 >= s.size()) {
        ok = false;
        return out;
      }
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      if (ec != std::errc{} || p != s.data() + i + 3) {
        ok = false;
        return out;
      }
      out += static_cast<char>(v);
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

bool is_json(std::string_view content_type) {
  const auto semi = content_type.find(';');
  auto media = content_type.substr(0, semi);
  while (!media.empty() && media.back() == ' ') media.remove_suffix(1);
  return media == "application/json";
}

struct depth_exceeded {};

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

result<json> parse_limited(std::string_view text, int max_depth) {
  try {
    return json::parse(text, [&](int depth, json::parse_event_t, json&) {
      if (depth > max_depth) throw depth_exceeded{};
      return true;
    });
  } catch (const depth_exceeded&) {
    return fail(errc::validation, fmt::format("JSON nested deeper than {} levels", max_depth));
  } catch (const json::parse_error& e) {
    return fail(errc::validation, fmt::format("malformed JSON at byte {}", e.byte));
  } catch (const json::exception&) {  // a number too large for a double (found by fuzzing)
    return fail(errc::validation, "malformed JSON: a number is out of range");
  }
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
    bool ok_key = true, ok_value = true;
    const std::string key = percent_decode(pair.substr(0, eq), ok_key);
    const std::string value = eq == std::string_view::npos
                                  ? std::string{}
                                  : percent_decode(pair.substr(eq + 1), ok_value);
    if (!ok_key || !ok_value) return invalid(key, "malformed percent-encoding");
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
  if (!correlation_id.empty()) body["correlation_id"] = correlation_id;
  response r{status, "application/problem+json", body.dump(), {}};
  if (status == 503) r.headers.emplace_back("Retry-After", "1");
  if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer");
  return r;
}

response router::refuse(int status, errc category, std::string detail) {
  return problem(status, error{category, std::move(detail), {}}, {});
}

std::optional<response> router::authorize(const request& r, std::string_view name,
                                          request_meta& meta) const {
  const auto& cfg = app_.config();
  if (cfg.tokens.empty()) return std::nullopt;
  constexpr std::string_view bearer = "Bearer ";
  if (!r.authorization.starts_with(bearer))
    return problem(401, {errc::unauthorized, "a bearer token is required", {}},
                   meta.correlation_id);
  auto it = cfg.tokens.find(r.authorization.substr(bearer.size()));
  if (it == cfg.tokens.end())
    return problem(401, {errc::unauthorized, "the bearer token is not valid", {}},
                   meta.correlation_id);
  meta.principal = it->second;
  if (auto role = cfg.roles.find(std::string(name));
      role != cfg.roles.end() && !meta.principal.has_role(role->second))
    return problem(
        403, {errc::forbidden, fmt::format("'{}' requires the role '{}'", name, role->second), {}},
        meta.correlation_id);
  return std::nullopt;
}

response router::dispatch(const request& r, std::string_view kind, std::string_view name,
                          std::string_view query_string) {
  request_meta meta;
  meta.correlation_id = r.correlation_id.empty() ? new_correlation_id() : r.correlation_id;
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
    for (const auto& [member, s] : schema["properties"].items()) {
      const auto type = s.value("type", "");
      if (type == "array" || type == "object" || !s.contains("type"))
        return problem(405,
                       {errc::validation,
                        fmt::format("'{}' has a non-scalar member '{}': use POST", name, member),
                        {}},
                       meta.correlation_id);
    }
    auto q = query_to_json(query_string, schema);
    if (!q) return problem(400, q.error(), meta.correlation_id);
    body = std::move(*q);
  } else {
    if (!r.body.empty() && !is_json(r.content_type))
      return problem(415, {errc::validation, "the body must be application/json", {}},
                     meta.correlation_id);
    auto parsed = r.body.empty() ? result<json>(json::object())
                                 : parse_limited(r.body, app_.config().max_json_depth);
    if (!parsed) return problem(400, parsed.error(), meta.correlation_id);
    body = std::move(*parsed);
  }
  if (auto denied = authorize(r, name, meta)) return *denied;
  auto wanted = requested_consistency(r);
  if (!wanted) return problem(400, wanted.error(), meta.correlation_id);
  if (*wanted) meta.consistency = **wanted;
  meta.deadline = r.deadline;
  auto outcome = is_command ? app_.commands().send_json(name, body, meta)
                            : app_.queries().ask_json(name, body, meta);
  metrics_.record_message(is_command ? "command" : "query", name,
                          outcome ? "ok" : to_string(outcome.error().category));
  if (!outcome)
    return problem(status_of(outcome.error().category), outcome.error(), meta.correlation_id);
  const std::string position = outcome->position.to_string();
  response res{200,
               "application/json",
               json{{"result", outcome->result}, {"position", position}}.dump(),
               {}};
  if (!position.empty()) res.headers.emplace_back("Cleave-Position", position);
  res.headers.emplace_back("X-Correlation-Id", meta.correlation_id);
  return res;
}

std::optional<consistent_read> router::consistent_read_of(const request& r) const {
  constexpr std::string_view prefix = "/queries/";
  auto path = std::string_view(r.target);
  path = path.substr(0, path.find('?'));
  if ((r.method != "GET" && r.method != "POST") || !path.starts_with(prefix)) return std::nullopt;
  const auto name = path.substr(prefix.size());
  request_meta meta;
  if (authorize(r, name, meta)) return std::nullopt;
  auto wanted = requested_consistency(r);
  if (!wanted || !*wanted || (*wanted)->required == consistency::level::eventual)
    return std::nullopt;
  return consistent_read{std::string(name), **wanted};
}

response router::openapi() const {
  json paths = json::object();
  auto add = [&](const message_ops& ops, bool command) {
    const auto& info = *ops.info;
    json ok_schema{
        {"type", "object"},
        {"properties", {{"result", ops.response_schema()}, {"position", {{"type", "string"}}}}},
        {"required", {"result", "position"}}};
    json op;
    op["operationId"] = std::string(info.wire_name);
    op["summary"] = fmt::format("{} {}", command ? "command" : "query", info.type_name);
    op["requestBody"]["required"] = true;
    op["requestBody"]["content"]["application/json"]["schema"] = ops.schema();
    op["responses"]["200"]["description"] = "the handler's response and the log position";
    op["responses"]["200"]["content"]["application/json"]["schema"] = ok_schema;
    op["responses"]["default"]["description"] = "a problem (RFC 9457)";
    op["responses"]["default"]["content"]["application/problem+json"]["schema"] = {
        {"type", "object"}};
    paths[fmt::format("/{}/{}", command ? "commands" : "queries", info.wire_name)]["post"] =
        std::move(op);
  };
  for (const auto* ops : app_.commands().handled_ops()) add(*ops, true);
  for (const auto* ops : app_.queries().handled_ops()) add(*ops, false);
  json doc{{"openapi", "3.1.0"},
           {"info", {{"title", "cleave application"}, {"version", "1"}}},
           {"paths", paths}};
  return {200, "application/json", doc.dump(), {}};
}

response router::static_file(const std::string& path) const {
  const auto& root = app_.config().static_dir;
  std::string relative = path == "/" ? "index.html" : path.substr(1);
  if (root.empty() || relative.find("..") != std::string::npos)
    return problem(404, {errc::not_found, "no such page", {}}, {});
  const auto file = root / relative;
  std::ifstream in(file, std::ios::binary);
  if (!in) return problem(404, {errc::not_found, "no such page", {}}, {});
  std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto ext = file.extension().string();
  const std::string type = ext == ".html"  ? "text/html; charset=utf-8"
                           : ext == ".js"  ? "text/javascript; charset=utf-8"
                           : ext == ".css" ? "text/css; charset=utf-8"
                           : ext == ".png" ? "image/png"
                                           : "application/octet-stream";
  return {200, type, std::move(body), {}};
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
  const auto start = std::chrono::steady_clock::now();
  const auto q = r.target.find('?');
  const std::string path = r.target.substr(0, q);
  const std::string_view query_string =
      q == std::string::npos ? std::string_view{} : std::string_view(r.target).substr(q + 1);
  std::string route = path;
  response res;
  try {
    auto allow = [&](std::string_view methods) {
      res = problem(405, {errc::validation, fmt::format("{} is not allowed here", r.method), {}},
                    r.correlation_id);
      res.headers.emplace_back("Allow", std::string(methods));
    };
    if (path.starts_with("/commands/") || path.starts_with("/queries/")) {
      const bool is_command = path.starts_with("/commands/");
      const std::string_view name = std::string_view(path).substr(is_command ? 10 : 9);
      route = is_command ? "/commands/{name}" : "/queries/{name}";
      if (r.method == "POST" || (!is_command && r.method == "GET"))
        res = dispatch(r, is_command ? "commands" : "queries", name, query_string);
      else
        allow(is_command ? "POST" : "GET, POST");
    } else if (path == "/health") {
      if (r.method != "GET")
        allow("GET");
      else
        res = {200,
               "application/json",
               json{{"status", "ok"}, {"head", app_.store().head().to_string()}}.dump(),
               {}};
    } else if (path == "/metrics") {
      if (r.method != "GET")
        allow("GET");
      else
        res = {200, "text/plain; version=0.0.4", metrics_.render() + lag_metrics(app_), {}};
    } else if (path.starts_with("/admin/")) {
      route = "/admin";
      request_meta meta;
      meta.correlation_id = r.correlation_id;
      if (auto denied = authorize(r, "admin", meta))
        res = std::move(*denied);
      else if (!app_.config().tokens.empty() && !meta.principal.has_role("admin"))
        res = problem(403, {errc::forbidden, "the admin API requires the role 'admin'", {}},
                      meta.correlation_id);
      else
        res = admin(r, path, meta);
    } else if (path == "/openapi.json") {
      if (r.method != "GET")
        allow("GET");
      else
        res = openapi();
    } else if (r.method == "GET") {
      route = "static";
      res = static_file(path);
    } else {
      route = "other";
      res = problem(404, {errc::validation, "no such route", {}}, r.correlation_id);
    }
  } catch (const error_exception& e) {
    res = problem(status_of(e.error().category), e.error(), r.correlation_id);
  } catch (const std::exception& e) {
    res = problem(500, {errc::internal, e.what(), {}}, r.correlation_id);
  }
  metrics_.record_request(route, res.status, std::chrono::steady_clock::now() - start);
  return res;
}

}  // namespace detail
}  // namespace cleave::http
