// GET /openapi.json: every route the router answers, described as OpenAPI 3.1.

#include "router.hpp"

#include <algorithm>
#include <set>

#include <fmt/format.h>

namespace cleave::http::detail {

namespace {

json ref(std::string_view kind, std::string_view name) {
  return {{"$ref", fmt::format("#/components/{}/{}", kind, name)}};
}

// Problems every route may answer, before it is routed or while it runs.
constexpr int any_route[] = {400, 405, 413, 431, 500, 503};

json string_schema() {
  return {{"type", "string"}};
}

json header(std::string_view description, json schema = string_schema()) {
  return {{"description", description}, {"schema", std::move(schema)}};
}

json header_parameter(std::string_view name, std::string_view description,
                      json schema = string_schema()) {
  return {{"name", name},
          {"in", "header"},
          {"description", description},
          {"schema", std::move(schema)}};
}

json components(bool with_tokens) {
  json c;
  c["schemas"]["problem"] = {
      {"type", "object"},
      {"description", "An RFC 9457 problem."},
      {"properties",
       {{"type", {{"type", "string"}, {"format", "uri-reference"}}},
        {"title", string_schema()},
        {"status", {{"type", "integer"}}},
        {"detail", string_schema()},
        {"errors",
         {{"type", "array"},
          {"description", "What was wrong with each member, by its JSON path."},
          {"items",
           {{"type", "object"},
            {"properties", {{"path", string_schema()}, {"message", string_schema()}}},
            {"required", {"path", "message"}}}}}},
        {"correlation_id",
         {{"type", "string"}, {"description", "Names the request in the log."}}}}},
      {"required", {"type", "title", "status"}}};
  c["headers"] = {
      {"Cleave-Position",
       header("Where the command's events sit in the log (an opaque token); send it back as "
              "Cleave-Min-Position to read your own writes.")},
      {"X-Correlation-Id", header("Names the request in the server's log.")},
      {"Idempotent-Replayed",
       header("true when this answer replays the first outcome of the same Idempotency-Key.",
              {{"type", "string"}, {"enum", {"true"}}})},
      {"Retry-After", header("Seconds to wait before retrying.", {{"type", "integer"}})},
      {"Allow", header("The methods this path takes.")},
      {"WWW-Authenticate", header("The authentication scheme: Bearer.")}};
  c["parameters"] = {
      {"Idempotency-Key",
       header_parameter("Idempotency-Key",
                        "The command's id: a retry with the same key has one effect and gets "
                        "the first outcome again (same status and body, with "
                        "Idempotent-Replayed); the same key with another message or payload is "
                        "a 422 /problems/idempotency-key-reused. Scoped to the principal when "
                        "tokens are configured.")},
      {"Cleave-Min-Position",
       header_parameter("Cleave-Min-Position",
                        "Read your writes: wait until the views this query reads have reached "
                        "this position token (a command's Cleave-Position); the same as "
                        "Cleave-Consistency: at_least=<token>.")},
      {"Cleave-Consistency",
       header_parameter(
           "Cleave-Consistency",
           "eventual (the default), strong, bounded=<milliseconds> or "
           "at_least=<token>; a 503 when it cannot be met in time, or when a view the query "
           "reads has parked events (dead letters) the answer would have to include, unless "
           "followed by ;dead_letters=accept.",
           {{"type", "string"},
            {"pattern",
             "^(eventual|strong|bounded=[0-9]+|at_least=[^;]+)(;dead_letters=accept)?$"}})},
      {"X-Correlation-Id",
       header_parameter("X-Correlation-Id",
                        "Names the request in the server's log (one is made when absent).")}};
  for (const auto& p : problem_statuses()) {
    std::set<std::string> types;
    for (const auto& kind : p.kinds) types.emplace(kind.type);
    json response{{"description", p.description},
                  {"content",
                   {{"application/problem+json",
                     {{"schema",
                       {{"$ref", "#/components/schemas/problem"},
                        {"properties",
                         {{"type", {{"enum", types}}}, {"status", {{"const", p.status}}}}}}}}}}}};
    response["headers"]["X-Correlation-Id"] = ref("headers", "X-Correlation-Id");
    if (!p.header.empty()) response["headers"][std::string(p.header)] = ref("headers", p.header);
    c["responses"][std::string(p.name)] = std::move(response);
  }
  if (with_tokens) c["securitySchemes"]["bearer"] = {{"type", "http"}, {"scheme", "bearer"}};
  return c;
}

// An operation answering `ok` or one of `problems` (beyond those of any route); every answer
// carries X-Correlation-Id.
json operation(std::string id, std::string summary, json ok, std::initializer_list<int> problems) {
  json op{{"operationId", std::move(id)}, {"summary", std::move(summary)}};
  for (auto& [status, response] : ok.items())
    response["headers"]["X-Correlation-Id"] = ref("headers", "X-Correlation-Id");
  op["responses"] = json::object();
  std::set<int> statuses(std::begin(any_route), std::end(any_route));
  statuses.insert(problems);
  for (const auto& p : problem_statuses())
    if (statuses.contains(p.status))
      op["responses"][std::to_string(p.status)] = ref("responses", p.name);
  op["responses"].update(ok);
  return op;
}

json json_content(json schema) {
  return {{"application/json", {{"schema", std::move(schema)}}}};
}

// A success response: {"<status>": {description, content}}.
json success(std::string_view status, std::string_view description, json content) {
  return {{status, {{"description", description}, {"content", std::move(content)}}}};
}

// An object whose members are all required.
json object_of(json properties) {
  json required = json::array();
  for (const auto& [name, schema] : properties.items()) required.push_back(name);
  return {{"type", "object"}, {"properties", std::move(properties)}, {"required", required}};
}

// A route outside authentication: it states so when the document requires a token elsewhere.
json open_route(json op) {
  op["security"] = json::array();
  return op;
}

// HEAD answers what GET does, headers only.
json head_of(json get) {
  get["operationId"] = get["operationId"].get<std::string>() + ".head";
  get["summary"] = "Headers only: " + get["summary"].get<std::string>();
  for (auto& [status, r] : get["responses"].items())
    if (!r.contains("$ref")) r.erase("content");
  return get;
}

}  // namespace

response router::openapi() const {
  const auto& cfg = app_.config();
  const bool with_tokens = !cfg.tokens.empty();
  // Problems of a route that reads or changes the application's state.
  const auto guarded = [&](json op, std::string_view role) {
    if (with_tokens) {
      op["responses"]["401"] = ref("responses", "unauthorized");
      op["responses"]["403"] = ref("responses", "forbidden");
    }
    if (!role.empty()) op["description"] = fmt::format("Requires the role '{}'.", role);
    return op;
  };
  const auto role_of = [&](std::string_view name) -> std::string {
    if (!with_tokens) return {};
    auto it = cfg.roles.find(std::string(name));
    return it == cfg.roles.end() ? std::string{} : it->second;
  };

  json paths = json::object();
  auto add_message = [&](const message_ops& ops, bool command) {
    const auto& info = *ops.info;
    const std::string name(info.wire_name);
    json ok = success("200", "The handler's response and the log position.",
                      json_content(object_of(
                          {{"result", ops.response_schema()}, {"position", string_schema()}})));
    ok["200"]["headers"]["Cleave-Position"] = ref("headers", "Cleave-Position");
    json parameters = json::array({ref("parameters", "X-Correlation-Id")});
    if (command) {
      ok["200"]["headers"]["Idempotent-Replayed"] = ref("headers", "Idempotent-Replayed");
      parameters.push_back(ref("parameters", "Idempotency-Key"));
    } else {
      parameters.push_back(ref("parameters", "Cleave-Consistency"));
      parameters.push_back(ref("parameters", "Cleave-Min-Position"));
    }
    const std::string summary = fmt::format("{} {}", command ? "command" : "query", info.type_name);
    const auto message = [&](std::string id) {
      auto op = guarded(operation(std::move(id), summary, ok, {404, 409, 422}), role_of(name));
      op["tags"] = {command ? "commands" : "queries"};
      op["parameters"] = parameters;
      return op;
    };
    auto& path = paths[fmt::format("/{}/{}", command ? "commands" : "queries", name)];
    path["post"] = message(name);
    path["post"]["responses"]["415"] = ref("responses", "unsupported_media_type");
    // An empty body reads as {}: it is enough for a message whose members are all optional.
    const json body = ops.schema();
    path["post"]["requestBody"] = {{"required", !body.value("required", json::array()).empty()},
                                   {"content", json_content(body)}};
    if (command) return;
    // The rule dispatch() applies: GET only when a query string can carry every member.
    const json& schema = query_schemas_.at(&ops);
    if (non_scalar_member(schema)) return;
    path["get"] = message(name + ".get");
    const auto& required = schema["required"];
    for (const auto& [member, s] : schema["properties"].items())
      path["get"]["parameters"].push_back(
          {{"name", member},
           {"in", "query"},
           {"required", std::find(required.begin(), required.end(), member) != required.end()},
           {"schema", s}});
  };
  for (const auto* ops : app_.commands().handled_ops()) add_message(*ops, true);
  for (const auto* ops : app_.queries().handled_ops()) add_message(*ops, false);

  paths["/health"]["get"] = open_route(operation(
      "health", "Whether the server is up, and the log's head",
      success("200", "Up.",
              json_content(object_of({{"status", {{"const", "ok"}}}, {"head", string_schema()}}))),
      {}));
  paths["/metrics"]["get"] = open_route(
      operation("metrics", "Prometheus metrics: requests, messages, projection and replica lag",
                success("200", "Prometheus text format 0.0.4.",
                        {{"text/plain", {{"schema", string_schema()}}}}),
                {}));
  paths["/openapi.json"]["get"] =
      open_route(operation("openapi", "This document",
                           success("200", "OpenAPI 3.1.", json_content({{"type", "object"}})), {}));

  // The admin API: the read side's projections.
  json projection_name{
      {"name", "name"}, {"in", "path"}, {"required", true}, {"schema", string_schema()}};
  if (const auto names = app_.projections().names(); !names.empty())
    projection_name["schema"]["enum"] = names;
  const auto admin = [&](std::string id, std::string summary, json ok,
                         std::initializer_list<int> problems, bool named = true) {
    auto op = guarded(operation(std::move(id), std::move(summary), std::move(ok), problems),
                      with_tokens ? "admin" : "");
    op["tags"] = {"admin"};
    op["parameters"] = json::array({ref("parameters", "X-Correlation-Id")});
    if (named) op["parameters"].push_back(projection_name);
    return op;
  };
  const json objects{{"type", "array"}, {"items", {{"type", "object"}}}};
  paths["/admin/projections"]["get"] =
      admin("admin.projections", "Every projection: checkpoint, lag, dead letters, rebuild",
            success("200", "The projections and the read replicas.",
                    json_content(object_of({{"projections", objects}, {"replicas", objects}}))),
            {403}, false);
  const json dead_letter = object_of({{"position", string_schema()},
                                      {"type", string_schema()},
                                      {"payload", json::object()},
                                      {"error", string_schema()}});
  paths["/admin/projections/{name}/dead-letters"]["get"] = admin(
      "admin.dead_letters", "The events parked because the projection's handler failed",
      success(
          "200", "The dead letters.",
          json_content(object_of({{"dead_letters", {{"type", "array"}, {"items", dead_letter}}}}))),
      {403, 404});
  paths["/admin/projections/{name}/replay-dead-letters"]["post"] =
      admin("admin.replay_dead_letters", "Runs the parked events through the projection again",
            success("200", "How many were applied, and how many are still parked.",
                    json_content(object_of({{"replayed", {{"type", "integer"}}},
                                            {"still_parked", {{"type", "integer"}}}}))),
            {403, 404});
  auto rebuild = admin("admin.rebuild", "Rebuilds the projection's view in the background",
                       success("202", "Started; its progress shows in GET /admin/projections.",
                               json_content(object_of({{"started", string_schema()}}))),
                       {400, 403, 404, 409});
  rebuild["parameters"].push_back(
      {{"name", "verify"},
       {"in", "query"},
       {"description",
        "Compare the rebuilt view with the live one (of the same version) first; keep the live "
        "one when they differ, and say what differs."},
       {"schema", {{"type", "boolean"}}}});
  paths["/admin/projections/{name}/rebuild"]["post"] = std::move(rebuild);

  if (!cfg.static_dir.empty()) {
    const auto page = [&](std::string id, std::string summary) {
      return open_route(operation(std::move(id), std::move(summary),
                                  success("200", "The file.", {{"*/*", json::object()}}), {404}));
    };
    paths["/"]["get"] = page("static.index", "The static root's index.html");
    paths["/{file}"]["get"] = page("static.file", "A file under the static root");
    paths["/{file}"]["get"]["parameters"] = {
        {{"name", "file"}, {"in", "path"}, {"required", true}, {"schema", string_schema()}}};
  }
  for (auto& [path, item] : paths.items())
    if (item.contains("get")) item["head"] = head_of(item["get"]);

  json doc{{"openapi", "3.1.0"},
           {"info",
            {{"title", cfg.api_title},
             {"version", cfg.api_version},
             {"description",
              "Generated by cleave from the registered commands and queries. Errors are "
              "RFC 9457 problems (application/problem+json)."}}},
           {"paths", std::move(paths)},
           {"components", components(with_tokens)}};
  if (with_tokens) doc["security"] = json::array({{{"bearer", json::array()}}});
  return {200, "application/json", doc.dump(), {}};
}

}  // namespace cleave::http::detail
