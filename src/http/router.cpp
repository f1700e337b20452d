// Routing (see router.hpp): which handler answers a request — the buses, the admin API, health,
// metrics, OpenAPI, static files — after authentication, with problem+json for every refusal.

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

namespace detail {

bool is_loopback(const std::string& address) {
  unsigned char v4[4], v6[16];
  if (::inet_pton(AF_INET, address.c_str(), v4) == 1) return v4[0] == 127;
  if (::inet_pton(AF_INET6, address.c_str(), v6) != 1) return false;
  constexpr unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::equal(v6, v6 + 12, mapped)) return v6[12] == 127;
  return std::all_of(v6, v6 + 15, [](unsigned char b) { return b == 0; }) && v6[15] == 1;
}

std::string new_correlation_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{:016x}", rng());
}

router::router(app& a) : app_(a) {
  // Built once: GET requests type their query strings by them.
  for (const auto* ops : a.queries().handled_ops()) query_schemas_.emplace(ops, ops->schema());
}

response router::problem(int status, const error& e, const std::string& correlation_id) const {
  json body{{"type", problem_type(status, e.category)},
            {"title", problem_status_of(status).title},
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
  if (const auto& s = problem_status_of(status); !s.header_value.empty())
    r.headers.emplace_back(s.header, s.header_value);
  return r;
}

response router::refuse(int status, errc category, std::string detail, std::string correlation_id) {
  if (correlation_id.empty()) correlation_id = new_correlation_id();
  return problem(status, error{category, std::move(detail), {}}, correlation_id);
}

result<principal> router::credentials(const request& r) const {
  const auto& tokens = app_.config().tokens;
  if (tokens.empty()) return principal{};
  return bearer_principal(r.authorization, tokens);
}

std::optional<response> router::authenticate(const request& r, request_meta& meta) const {
  auto who = r.vetted ? r.vetted->who : credentials(r);
  if (!who) return problem(401, who.error(), meta.correlation_id);
  meta.principal = std::move(*who);
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
  auto wanted = r.vetted ? r.vetted->wanted : requested_consistency(r.min_position, r.consistency);
  if (!wanted) return problem(400, wanted.error(), meta.correlation_id);
  if (*wanted) meta.consistency = **wanted;
  auto budget = app_.config().request_timeout;
  if (!r.timeout.empty()) {
    std::int64_t ms = 0;
    const auto* end = r.timeout.data() + r.timeout.size();
    if (auto [p, ec] = std::from_chars(r.timeout.data(), end, ms);
        ec != std::errc{} || p != end || ms <= 0)
      return problem(400,
                     {errc::validation,
                      "Cleave-Timeout must be a whole number of milliseconds, 1 or more",
                      {}},
                     meta.correlation_id);
    budget = std::min(budget, std::chrono::milliseconds(ms));
  }
  const auto received = r.received == clock::time_point{} ? clock::now() : r.received;
  meta.deadline = std::min(r.deadline, received + budget);
  std::optional<std::string> replay_of;
  auto outcome = is_command ? app_.commands().send_json(name, body, meta, &replay_of)
                            : app_.queries().ask_json(name, body, meta);
  metrics_.record_message(is_command ? "command" : "query", name,
                          outcome ? "ok" : to_string(outcome.error().category));
  // (Read in the answer's own transaction when the bus could; else now.)
  if (outcome && !is_command && outcome->position.empty())
    outcome->position = answered_position(name);
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

position_token router::answered_position(std::string_view name) const {
  try {
    return app_.read_consistency().position_of(name);
  } catch (const std::exception& e) {
    spdlog::debug("reading the position of an answer to {}: {}", name, e.what());
    return {};
  }
}

std::optional<consistent_read> router::vet(request& r) const {
  constexpr std::string_view prefix = "/queries/";
  auto path = std::string_view(r.target);
  path = path.substr(0, path.find('?'));
  if ((r.method != "GET" && r.method != "HEAD" && r.method != "POST") || !path.starts_with(prefix))
    return std::nullopt;
  const auto name = path.substr(prefix.size());
  auto& vetted = r.vetted.emplace(vetting{credentials(r), std::nullopt});
  if (!vetted.who) return std::nullopt;
  vetted.wanted = requested_consistency(r.min_position, r.consistency);
  // A caller without the role is answered (403) at once, not after a wait.
  const auto& roles = app_.config().roles;
  if (auto role = roles.find(std::string(name));
      role != roles.end() && !vetted.who->has_role(role->second))
    return std::nullopt;
  const auto& wanted = vetted.wanted;
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

// The admin API (the role "admin" when tokens are configured):
//   GET  /admin/projections                          every projection, with its rebuild job
//   GET  /admin/projections/{name}/dead-letters
//   POST /admin/projections/{name}/replay-dead-letters
//   POST /admin/projections/{name}/rebuild[?verify=true]   202; progress in the listing
//   GET  /admin/schedules                            scheduled commands: pending, then failed
//   GET  /admin/inboxes, POST /admin/inboxes/{name}/replay   messages from outside whose command
//                                                    was refused (app::add_inbox_source)
response router::admin(const request& r, const std::string& path, request_meta& meta) {
  auto& p = app_.projections();
  const auto ok = [](const json& body, int status = 200) {
    return response{status, "application/json", body.dump(), {}};
  };
  if (path == "/admin/schedules") {
    if (r.method != "GET")
      return problem(405, {errc::validation, "use GET", {}}, meta.correlation_id);
    const auto counts = app_.schedules().count();
    return ok({{"pending", counts.pending},
               {"failed", counts.failed},
               {"schedules", schedules_json(app_.schedules())}});
  }
  if (path == "/admin/inboxes" || path.starts_with("/admin/inboxes/"))
    return inboxes(r, path, meta);
  constexpr std::string_view prefix = "/admin/projections";
  if (path == prefix) {
    if (r.method != "GET")
      return problem(405, {errc::validation, "use GET", {}}, meta.correlation_id);
    auto list = projections_json(p);
    const auto jobs = app_.rebuild_jobs();
    for (auto& item : list) {
      auto job = jobs.find(item["name"].get<std::string>());
      if (job == jobs.end()) continue;
      auto rebuild = rebuild_json(job->second.progress);
      rebuild["running"] = job->second.running;
      rebuild["error"] = job->second.error;
      item["rebuild"] = std::move(rebuild);
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

std::optional<response> router::admin_denied(const request& r, request_meta& meta) const {
  const bool open = app_.config().tokens.empty();
  if (auto denied = authenticate(r, meta)) return denied;
  if (open && !is_loopback(r.peer))
    return problem(
        403,
        {errc::forbidden,
         "the admin API and the event feed answer only loopback clients while no tokens are "
         "configured",
         {}},
        meta.correlation_id);
  if (!open && !meta.principal.has_role("admin"))
    return problem(
        403, {errc::forbidden, "the admin API and the event feed require the role 'admin'", {}},
        meta.correlation_id);
  return std::nullopt;
}

live_route router::live(const request& r) {
  if (r.method != "GET") return live_route::none;
  const std::string_view path = std::string_view(r.target).substr(0, r.target.find('?'));
  if (path == "/events") return live_route::events;
  if (path.starts_with("/queries/") && path.ends_with("/live") &&
      path.size() > std::string_view("/queries//live").size())
    return live_route::query;
  return live_route::none;
}

request router::without_live(const request& r) {
  request out = r;
  const auto q = r.target.find('?');
  const auto path_end = q == std::string::npos ? r.target.size() : q;
  out.target = r.target.substr(0, path_end - 5) + r.target.substr(path_end);
  return out;
}

std::variant<response, event_feed> router::open_feed(const request& r) {
  request_meta meta;
  meta.correlation_id = r.correlation_id.empty() ? new_correlation_id() : r.correlation_id;
  if (auto denied = admin_denied(r, meta)) return std::move(*denied);
  event_feed feed;
  std::string after = r.last_event_id;
  const auto q = r.target.find('?');
  std::string_view rest =
      q == std::string::npos ? std::string_view{} : std::string_view(r.target).substr(q + 1);
  const auto bad = [&](std::string detail) {
    return problem(400, {errc::validation, std::move(detail), {}}, meta.correlation_id);
  };
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const auto pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    const auto eq = pair.find('=');
    const auto key = pair.substr(0, eq);
    const auto value =
        percent_decode(eq == std::string_view::npos ? "" : pair.substr(eq + 1), true);
    if (!value) return bad(fmt::format("parameter '{}' is not well percent-encoded", key));
    if (key == "after") {
      after = *value;
    } else if (key == "types") {
      std::string_view list = *value;
      while (!list.empty()) {
        const auto comma = list.find(',');
        if (auto one = list.substr(0, comma); !one.empty()) feed.types.emplace_back(one);
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
      }
    } else {
      return bad(fmt::format("unknown parameter '{}': use after and types", key));
    }
  }
  if (!after.empty()) {
    auto token = position_token::parse(after);
    // A position past the log's head would wait, silently, for events that were never written.
    if (!token || !app_.projections().could_have_issued(*token))
      return bad("after (or Last-Event-ID) is not a position this service gave");
    feed.after = *token;
  }
  return feed;
}

// GET /admin/inboxes: each inbox's dead letters; POST /admin/inboxes/{name}/replay.
response router::inboxes(const request& r, const std::string& path, request_meta& meta) {
  const auto& sources = app_.inbox_sources();
  if (path == "/admin/inboxes") {
    if (r.method != "GET")
      return problem(405, {errc::validation, "use GET", {}}, meta.correlation_id);
    json out = json::array();
    for (const auto& [name, source] : sources)
      out.push_back({{"name", name}, {"dead_letters", source.dead_letters()}});
    return {200, "application/json", json{{"inboxes", out}}.dump(), {}};
  }
  const std::string rest = path.substr(std::string_view("/admin/inboxes/").size());
  const auto slash = rest.find('/');
  const auto source = sources.find(rest.substr(0, slash));
  if (source == sources.end() || slash == std::string::npos || rest.substr(slash) != "/replay")
    return problem(404, {errc::not_found, "no such inbox route", {}}, meta.correlation_id);
  if (r.method != "POST")
    return problem(405, {errc::validation, "use POST", {}}, meta.correlation_id);
  const auto replayed = source->second.replay();
  return {
      200,
      "application/json",
      json{{"replayed", replayed}, {"still_parked", source->second.dead_letters().size()}}.dump(),
      {}};
}

bool router::uses_workers(std::string_view target) {
  return target.starts_with("/commands/") || target.starts_with("/queries/") ||
         target.starts_with("/admin/");
}

bool router::may_wait(const request& r) {
  if (!r.vetted || !r.vetted->wanted || !*r.vetted->wanted) return false;
  const auto level = (*r.vetted->wanted)->required;
  return level == consistency::level::strong || level == consistency::level::bounded;
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
      if (auto denied = admin_denied(r, meta))
        res = std::move(*denied);
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
