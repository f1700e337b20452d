// GET /openapi.json describes every route the router answers, the headers it reads and writes,
// and every problem it may answer with; its title and version come from the configuration.

#include <fstream>
#include <optional>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>
#include <cleave/http/server.hpp>

#include "router.hpp"
#include "temp_dir.hpp"

namespace openapi_test {
struct restock {
  std::string product_id;
  std::int64_t quantity = 0;
};
CLEAVE_COMMAND(restock, "test.restock", product_id, quantity)

struct restocked {
  std::string product_id;
  std::int64_t quantity = 0;
};
CLEAVE_EVENT(restocked, "test.restocked", product_id, quantity)

struct stock {
  std::string product_id;
  std::int64_t quantity = 0;
};
CLEAVE_RECORD(stock, product_id, quantity)

struct stock_by_id {
  std::string product_id;
  std::optional<std::int64_t> at_least;
  bool exact = false;
  using response = stock;
};
CLEAVE_QUERY(stock_by_id, "test.stock_by_id", product_id, at_least, exact)

struct stocks_by_ids {
  std::vector<std::string> product_ids;
  using response = std::vector<stock>;
};
CLEAVE_QUERY(stocks_by_ids, "test.stocks_by_ids", product_ids)
}  // namespace openapi_test

namespace {

using cleave::json;
using cleave::http::detail::request;
using cleave::http::detail::router;
using namespace openapi_test;

struct openapi_doc : testing::Test {
  cleave::testing::temp_dir dir;
  std::unique_ptr<cleave::app> app;
  std::unique_ptr<router> routes;
  int starts = 0;

  // Serves a fresh application with `cfg`; returns its OpenAPI document.
  // (Not const: a member the document lacks then reads as null and fails an expectation.)
  json start(cleave::app_config cfg = {}) {
    routes.reset();
    app.reset();
    cfg.database = dir.file("app" + std::to_string(++starts) + ".db");
    cfg.run_projector = false;
    app = std::make_unique<cleave::app>(cfg);
    app->commands().add([](const restock& c, cleave::write_context& tx) -> cleave::result<void> {
      tx.emit(c.product_id, restocked{c.product_id, c.quantity});
      return {};
    });
    app->queries().add(
        [](const stock_by_id& q, const cleave::read_context&) -> cleave::result<stock> {
          return stock{q.product_id, 1};
        });
    app->queries().add(
        [](const stocks_by_ids&,
           const cleave::read_context&) -> cleave::result<std::vector<stock>> { return {}; });
    cleave::projection p{"stock_view"};
    p.schema("create table {view}(product_id text primary key, quantity bigint not null)")
        .on([](const restocked& e, cleave::view_context& v) {
          v.exec("insert into {view}(product_id, quantity) values ($1, $2)", e.product_id,
                 e.quantity);
        })
        .async();
    app->add_projection(std::move(p));
    app->migrate();
    routes = std::make_unique<router>(*app);
    auto r = call("GET", "/openapi.json");
    EXPECT_EQ(r.status, 200);
    return json::parse(r.body);
  }

  cleave::http::detail::response call(std::string method, std::string target, std::string body = {},
                                      std::string token = {}) {
    request r;
    r.method = std::move(method);
    r.target = std::move(target);
    r.body = std::move(body);
    r.peer = "127.0.0.1";
    if (r.method == "POST") r.content_type = "application/json";
    if (!token.empty()) r.authorization = "Bearer " + token;
    return routes->handle(r);
  }
};

// The names of an operation's parameters, in order.
std::vector<std::string> parameter_refs(const json& op) {
  std::vector<std::string> out;
  for (const auto& p : op.value("parameters", json::array()))
    out.push_back(p.contains("$ref") ? p["$ref"].get<std::string>() : p["name"].get<std::string>());
  return out;
}

TEST_F(openapi_doc, title_and_version_come_from_the_config_file) {
  auto doc = start();
  EXPECT_EQ(doc["info"]["title"], "cleave application");
  EXPECT_EQ(doc["info"]["version"], "1");
  const auto file = dir.file("app.json");
  std::ofstream(file) << R"({"openapi": {"title": "Lending library", "version": "2.1"}})";
  auto cfg = cleave::load_config(file);
  ASSERT_TRUE(cfg) << cfg.error().describe();
  doc = start(*cfg);
  EXPECT_EQ(doc["info"]["title"], "Lending library");
  EXPECT_EQ(doc["info"]["version"], "2.1");
  EXPECT_EQ(doc["openapi"], "3.1.0");

  std::ofstream(file) << R"({"openapi": {"title": 3}})";
  EXPECT_FALSE(cleave::load_config(file)) << "a title must be a string";
}

TEST_F(openapi_doc, a_query_whose_members_are_all_scalars_can_be_sent_with_get) {
  auto doc = start();
  auto& get = doc["paths"]["/queries/test.stock_by_id"]["get"];
  ASSERT_TRUE(get.is_object()) << doc["paths"].dump(2);
  json query_parameters = json::object();
  for (const auto& p : get["parameters"])
    if (p.value("in", "") == "query") query_parameters[p["name"].get<std::string>()] = p;
  EXPECT_EQ(query_parameters["product_id"]["required"], true);
  EXPECT_EQ(query_parameters["product_id"]["schema"]["type"], "string");
  EXPECT_EQ(query_parameters["at_least"]["required"], false);
  EXPECT_EQ(query_parameters["at_least"]["schema"]["type"], "integer");
  EXPECT_EQ(query_parameters["exact"]["schema"]["type"], "boolean");
  EXPECT_TRUE(doc["paths"]["/queries/test.stock_by_id"].contains("post"));
  EXPECT_TRUE(doc["paths"]["/queries/test.stock_by_id"].contains("head"));
  EXPECT_EQ(get["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["result"]
               ["properties"]["quantity"]["type"],
            "integer");

  // A member a query string cannot carry: POST only, as the router answers.
  EXPECT_FALSE(doc["paths"]["/queries/test.stocks_by_ids"].contains("get"));
  EXPECT_TRUE(doc["paths"]["/queries/test.stocks_by_ids"].contains("post"));
  EXPECT_EQ(call("GET", "/queries/test.stocks_by_ids").status, 405);
  EXPECT_FALSE(doc["paths"]["/commands/test.restock"].contains("get"));
}

TEST_F(openapi_doc, commands_and_queries_name_the_headers_they_read_and_write) {
  auto doc = start();
  auto& command = doc["paths"]["/commands/test.restock"]["post"];
  EXPECT_THAT(parameter_refs(command),
              testing::UnorderedElementsAre("#/components/parameters/Idempotency-Key",
                                            "#/components/parameters/X-Correlation-Id"));
  EXPECT_EQ(doc["components"]["parameters"]["Idempotency-Key"]["in"], "header");
  EXPECT_EQ(doc["components"]["parameters"]["Idempotency-Key"]["name"], "Idempotency-Key");
  auto& ok = command["responses"]["200"]["headers"];
  for (const auto* h : {"Cleave-Position", "X-Correlation-Id", "Idempotent-Replayed"})
    EXPECT_EQ(ok[h]["$ref"], std::string("#/components/headers/") + h);
  EXPECT_EQ(command["requestBody"]["content"]["application/json"]["schema"]["required"],
            (json{"product_id", "quantity"}));

  for (const auto* method : {"get", "post"}) {
    auto& query = doc["paths"]["/queries/test.stock_by_id"][method];
    EXPECT_THAT(parameter_refs(query),
                testing::IsSupersetOf({"#/components/parameters/Cleave-Min-Position",
                                       "#/components/parameters/Cleave-Consistency",
                                       "#/components/parameters/X-Correlation-Id"}))
        << method;
    EXPECT_TRUE(query["responses"]["200"]["headers"].contains("Cleave-Position"));
  }
  auto& headers = doc["components"]["headers"];
  EXPECT_EQ(doc["components"]["responses"]["unavailable"]["headers"]["Retry-After"]["$ref"],
            "#/components/headers/Retry-After");
  EXPECT_EQ(doc["components"]["responses"]["method_not_allowed"]["headers"]["Allow"]["$ref"],
            "#/components/headers/Allow");
  EXPECT_EQ(doc["components"]["responses"]["unauthorized"]["headers"]["WWW-Authenticate"]["$ref"],
            "#/components/headers/WWW-Authenticate");
  for (const auto* h : {"Retry-After", "Allow", "WWW-Authenticate"})
    EXPECT_TRUE(headers.contains(h)) << h;
}

TEST_F(openapi_doc, every_problem_response_has_its_status_and_the_shared_problem_schema) {
  auto doc = start();
  auto& command = doc["paths"]["/commands/test.restock"]["post"];
  std::vector<std::string> statuses;
  for (const auto& [status, response] : command["responses"].items()) statuses.push_back(status);
  EXPECT_THAT(statuses, testing::ElementsAre("200", "400", "404", "405", "409", "413", "415", "422",
                                             "431", "500", "503"));
  EXPECT_FALSE(command["responses"].contains("default"));
  auto& components = doc["components"]["responses"];
  for (const auto& [status, response] : command["responses"].items()) {
    if (status == "200") continue;
    const std::string ref = response.value("$ref", "");
    auto& problem = components[ref.substr(ref.rfind('/') + 1)];
    auto& schema = problem["content"]["application/problem+json"]["schema"];
    EXPECT_EQ(schema["$ref"], "#/components/schemas/problem") << status;
    EXPECT_EQ(schema["properties"]["status"]["const"], std::stoi(status));
    EXPECT_EQ(problem["headers"]["X-Correlation-Id"]["$ref"],
              "#/components/headers/X-Correlation-Id")
        << status;
  }
  EXPECT_EQ(components["rejected"]["content"]["application/problem+json"]["schema"]["properties"]
                      ["type"]["enum"],
            (json{"/problems/idempotency-key-reused", "/problems/rejected"}));
  EXPECT_EQ(components["not_found"]["content"]["application/problem+json"]["schema"]["properties"]
                      ["type"]["enum"],
            (json{"/problems/not-found", "/problems/unknown-message"}));
  EXPECT_EQ(doc["components"]["schemas"]["problem"]["required"], (json{"type", "title", "status"}));
  // What the router answers agrees with the document.
  const auto refused = call("POST", "/commands/test.restock", R"({"product_id":"p"})");
  EXPECT_EQ(refused.status, 400);
  EXPECT_EQ(refused.content_type, "application/problem+json");
}

TEST_F(openapi_doc, configured_tokens_add_a_bearer_scheme_that_open_routes_do_not_need) {
  auto doc = start();
  EXPECT_FALSE(doc.contains("security"));
  EXPECT_FALSE(doc["components"].contains("securitySchemes"));
  EXPECT_FALSE(doc["paths"]["/commands/test.restock"]["post"]["responses"].contains("401"));

  cleave::app_config cfg;
  cfg.tokens["s3cret"] = cleave::principal{"ann", {"staff", "admin"}};
  cfg.roles["test.restock"] = "staff";
  doc = start(cfg);
  EXPECT_EQ(doc["components"]["securitySchemes"]["bearer"],
            (json{{"type", "http"}, {"scheme", "bearer"}}));
  EXPECT_EQ(doc["security"], json::parse(R"([{"bearer": []}])"));
  auto& command = doc["paths"]["/commands/test.restock"]["post"];
  EXPECT_TRUE(command["responses"].contains("401"));
  EXPECT_TRUE(command["responses"].contains("403"));
  EXPECT_THAT(command["description"].get<std::string>(), testing::HasSubstr("'staff'"));
  EXPECT_THAT(doc["paths"]["/admin/projections"]["get"]["description"].get<std::string>(),
              testing::HasSubstr("'admin'"));
  for (const auto* open : {"/health", "/metrics", "/openapi.json"}) {
    EXPECT_EQ(doc["paths"][open]["get"]["security"], json::array()) << open;
    EXPECT_EQ(call("GET", open).status, 200) << open;
  }
  EXPECT_EQ(call("POST", "/commands/test.restock", R"({"product_id":"p","quantity":1})").status,
            401);
}

TEST_F(openapi_doc, every_documented_operation_is_one_the_router_answers) {
  auto doc = start();
  std::vector<std::string> documented;
  for (const auto& [path, item] : doc["paths"].items())
    for (const auto& [method, op] : item.items()) documented.push_back(method + " " + path);
  EXPECT_THAT(documented,
              testing::IsSupersetOf(
                  {"get /health", "get /metrics", "get /openapi.json", "head /health",
                   "get /admin/projections", "get /admin/projections/{name}/dead-letters",
                   "post /admin/projections/{name}/replay-dead-letters",
                   "post /admin/projections/{name}/rebuild", "post /commands/test.restock",
                   "get /queries/test.stock_by_id", "post /queries/test.stock_by_id",
                   "post /queries/test.stocks_by_ids"}));
  EXPECT_EQ(
      doc["paths"]["/admin/projections/{name}/rebuild"]["post"]["parameters"][1]["schema"]["enum"],
      json{"stock_view"});

  for (const auto& [path, item] : doc["paths"].items()) {
    for (const auto& [method, op] : item.items()) {
      std::string target = path;
      if (auto at = target.find("{name}"); at != std::string::npos)
        target.replace(at, 6, "stock_view");
      if (method == "get" && path.starts_with("/queries/")) target += "?product_id=p";
      std::string upper = method;
      for (auto& ch : upper) ch = static_cast<char>(std::toupper(ch));
      const auto r = call(upper, target, method == "post" ? R"({"product_id":"p"})" : "");
      EXPECT_NE(r.status, 405) << method << " " << path << ": " << r.body;
      EXPECT_FALSE(r.status == 404 && r.body.find("unknown-message") != std::string::npos)
          << method << " " << path << ": " << r.body;
      EXPECT_TRUE(op.value("responses", json::object()).contains(std::to_string(r.status)))
          << method << " " << path << " answered " << r.status << ", not documented";
    }
  }
}

}  // namespace
