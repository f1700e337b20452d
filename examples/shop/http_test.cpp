// The shop over real HTTP on loopback: every status the server returns, and that a refused
// request changes nothing.

#include <sys/wait.h>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/http/server.hpp>

#include "http_client.hpp"
#include "shop.hpp"
#include "temp_dir.hpp"

namespace test_only {
struct explode {
  std::string why;
};
CLEAVE_COMMAND(explode, "test.explode", why)

struct slow_restock {
  std::string product_id;
  std::int64_t millis = 0;
};
CLEAVE_COMMAND(slow_restock, "test.slow_restock", product_id, millis)
// Reads a product's stock, then waits: a commit during the wait is not in its answer.
struct slow_stock {
  std::string product_id;
  std::int64_t millis = 0;
  using response = std::int64_t;
  static constexpr bool cache_answers = true;
};
CLEAVE_QUERY(slow_stock, "test.slow_stock", product_id, millis)
}  // namespace test_only

namespace {

using cleave::json;
using cleave::testing::http;
using cleave::testing::http_connection;
using testing::HasSubstr;

struct shop_server : testing::Test {
  cleave::testing::temp_dir dir;
  std::unique_ptr<cleave::app> app;
  std::unique_ptr<cleave::http::server> server;
  std::uint16_t port = 0;

  void start(cleave::app_config cfg = {}) {
    cfg.database = dir.file("shop.db");
    cfg.listen = "127.0.0.1:0";
    cfg.static_dir = SHOP_WEB_DIR;
    app = std::make_unique<cleave::app>(cfg);
    shop::install(*app);
    app->commands().add([](const test_only::explode& c) -> cleave::result<void> {
      throw std::runtime_error("secret detail: " + c.why);
    });
    app->commands().add(
        [](const test_only::slow_restock& c, cleave::write_context& tx) -> cleave::result<void> {
          std::this_thread::sleep_for(std::chrono::milliseconds(c.millis));
          tx.exec("update products set stock = stock + 1 where id = $1", c.product_id);
          return {};
        });
    app->queries().add([](const test_only::slow_stock& q,
                          const cleave::read_context& db) -> cleave::result<std::int64_t> {
      auto stock = db.one<std::int64_t>("select stock from products where id = $1", q.product_id);
      std::this_thread::sleep_for(std::chrono::milliseconds(q.millis));
      return stock.value_or(-1);
    });
    app->migrate();
    shop::seed_demo_data(*app);
    server = std::make_unique<cleave::http::server>(*app);
    server->start();
    app->start_workers();
    port = server->port();
  }
  void TearDown() override {
    if (server) server->stop();
    if (app) app->stop_workers();
  }

  json body(const cleave::testing::http_reply& r) { return json::parse(r.body); }
  std::int64_t stock(const std::string& id) {
    return body(
        http(port, "GET", "/queries/shop.product_stock?product_id=" + id))["result"]["stock"];
  }
  std::string head() { return body(http(port, "GET", "/health"))["head"]; }
  // Runs one of the application's verbs as `shop args...` would: its exit code and stdout.
  std::pair<int, std::string> run_verb(std::vector<std::string> args) {
    args.insert(args.begin(), "shop");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    testing::internal::CaptureStdout();
    const int code = app->main(static_cast<int>(argv.size()), argv.data());
    return {code, testing::internal::GetCapturedStdout()};
  }

  // Asserts the reply is a problem with this status and type.
  void expect_problem(cleave::testing::http_reply r, int status, const std::string& type) {
    EXPECT_EQ(r.status, status) << r.body;
    EXPECT_EQ(r.headers["content-type"], "application/problem+json");
    auto p = json::parse(r.body, nullptr, false);
    ASSERT_FALSE(p.is_discarded()) << r.body;
    EXPECT_EQ(p["type"], type);
    EXPECT_EQ(p["status"], status);
  }
};

TEST_F(shop_server, a_command_returns_its_result_and_position_and_the_query_sees_it) {
  start();
  auto r =
      http(port, "POST", "/commands/shop.place_order",
           R"({"order_id":"o1","customer_id":"ada","lines":[{"product_id":"mug","quantity":2}]})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = body(r);
  EXPECT_EQ(j["result"]["total_cents"], 1198);
  EXPECT_FALSE(j["position"].get<std::string>().empty());
  EXPECT_EQ(r.headers["cleave-position"], j["position"]);
  auto q = http(port, "POST", "/queries/shop.order_summary", R"({"order_id":"o1"})",
                {{"Content-Type", "application/json"},
                 {"Cleave-Min-Position", r.headers["cleave-position"]}});
  ASSERT_EQ(q.status, 200) << q.body;
  EXPECT_EQ(body(q)["result"]["buyer"]["name"], "Ada Lovelace");
  EXPECT_EQ(body(q)["result"]["lines"][0]["product_name"], "Mug");
  // The answer carries the position it reflects (its view's checkpoint), at or past the
  // command's, which a client sends back to read nothing older.
  const auto answered = body(q)["position"].get<std::string>();
  ASSERT_FALSE(answered.empty());
  EXPECT_EQ(q.headers["cleave-position"], answered);
  EXPECT_FALSE(*cleave::position_token::parse(answered) <
               *cleave::position_token::parse(r.headers["cleave-position"]));
  auto again = http(port, "POST", "/queries/shop.order_summary", R"({"order_id":"o1"})",
                    {{"Content-Type", "application/json"}, {"Cleave-Min-Position", answered}});
  EXPECT_EQ(again.status, 200) << again.body;
}

TEST_F(shop_server, get_queries_take_their_scalar_fields_from_the_query_string) {
  start();
  auto r = http(port, "GET", "/queries/shop.product_stock?product_id=kettle");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(body(r)["result"]["stock"], 12);
  expect_problem(http(port, "GET", "/queries/shop.top_products?limit=ten"), 400,
                 "/problems/validation");
  EXPECT_EQ(http(port, "GET", "/queries/shop.top_products?limit=2").status, 200);
}

TEST_F(shop_server, refused_requests_return_each_status_and_change_nothing) {
  start();
  const auto before_head = head();
  const auto before_stock = stock("cosy");
  // 400: malformed JSON, a failed validation naming the member, nesting too deep.
  expect_problem(http(port, "POST", "/commands/shop.restock", R"({"product_id":)"), 400,
                 "/problems/validation");
  auto invalid =
      http(port, "POST", "/commands/shop.restock", R"({"product_id":"cosy","quantity":2.5})");
  expect_problem(invalid, 400, "/problems/validation");
  EXPECT_EQ(body(invalid)["errors"][0]["path"], "quantity");
  auto unknown_member =
      http(port, "POST", "/commands/shop.restock", R"({"product_id":"cosy","quantity":1,"x":1})");
  EXPECT_EQ(body(unknown_member)["errors"][0]["path"], "x");
  expect_problem(
      http(port, "POST", "/commands/shop.restock", R"({"product_id":"cosy","quantity":0})"), 400,
      "/problems/validation");
  expect_problem(
      http(port, "POST", "/commands/shop.restock", std::string(100, '[') + std::string(100, ']')),
      400, "/problems/validation");
  // 404: an unknown command; a missing entity.
  expect_problem(http(port, "POST", "/commands/shop.steal", "{}"), 404,
                 "/problems/unknown-message");
  expect_problem(
      http(port, "POST", "/commands/shop.restock", R"({"product_id":"nope","quantity":1})"), 404,
      "/problems/not-found");
  // 405: wrong method, with Allow.
  auto put = http(port, "PUT", "/commands/shop.restock", "{}");
  expect_problem(put, 405, "/problems/method-not-allowed");
  EXPECT_EQ(put.headers["allow"], "POST");
  expect_problem(http(port, "GET", "/commands/shop.restock"), 405, "/problems/method-not-allowed");
  // 409: a conflict (the customer exists).
  expect_problem(
      http(port, "POST", "/commands/shop.register_customer", R"({"id":"ada","name":"Ada"})"), 409,
      "/problems/conflict");
  // 415: not JSON.
  expect_problem(http(port, "POST", "/commands/shop.restock", "product_id=cosy",
                      {{"Content-Type", "text/plain"}}),
                 415, "/problems/unsupported-media-type");
  // 422: a business rule.
  auto short_stock = http(
      port, "POST", "/commands/shop.place_order",
      R"({"order_id":"o9","customer_id":"ada","lines":[{"product_id":"cosy","quantity":99}]})");
  expect_problem(short_stock, 422, "/problems/rejected");
  EXPECT_THAT(body(short_stock)["detail"].get<std::string>(), HasSubstr("not enough stock"));
  // 500: no internals in the body.
  auto boom = http(port, "POST", "/commands/test.explode", R"({"why":"db password"})");
  expect_problem(boom, 500, "/problems/internal");
  EXPECT_THAT(boom.body, testing::Not(HasSubstr("db password")));
  EXPECT_THAT(body(boom)["detail"].get<std::string>(), HasSubstr("correlation id"));

  EXPECT_EQ(head(), before_head) << "a refused request reached the log";
  EXPECT_EQ(stock("cosy"), before_stock) << "a refused request changed the stock";
}

TEST_F(shop_server, an_oversized_body_is_refused_from_its_content_length_before_it_is_read) {
  cleave::app_config cfg;
  cfg.max_body_bytes = 1024;
  start(cfg);
  http_connection c(port);
  // Only the headers are sent; the answer comes without the body.
  c.send_raw(
      "POST /commands/shop.restock HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: 10000000\r\n\r\n");
  auto r = c.read_reply();
  expect_problem(r, 413, "/problems/body-too-large");
}

TEST_F(shop_server, oversized_headers_are_refused) {
  cleave::app_config cfg;
  cfg.max_header_bytes = 4096;
  start(cfg);
  auto r = http(port, "GET", "/health", "", {{"X-Padding", std::string(8000, 'a')}});
  expect_problem(r, 431, "/problems/headers-too-large");
}

TEST_F(shop_server, bearer_tokens_and_roles_guard_commands) {
  cleave::app_config cfg;
  cfg.tokens["t-clerk"] = cleave::principal{"clerk", {"staff"}};
  cfg.tokens["t-guest"] = cleave::principal{"guest", {}};
  cfg.roles["shop.restock"] = "staff";
  start(cfg);
  const std::string restock = R"({"product_id":"cosy","quantity":1})";
  expect_problem(http(port, "POST", "/commands/shop.restock", restock), 401,
                 "/problems/unauthorized");
  expect_problem(http(port, "POST", "/commands/shop.restock", restock,
                      {{"Content-Type", "application/json"}, {"Authorization", "Bearer wrong"}}),
                 401, "/problems/unauthorized");
  expect_problem(http(port, "POST", "/commands/shop.restock", restock,
                      {{"Content-Type", "application/json"}, {"Authorization", "Bearer t-guest"}}),
                 403, "/problems/forbidden");
  EXPECT_EQ(http(port, "POST", "/commands/shop.restock", restock,
                 {{"Content-Type", "application/json"}, {"Authorization", "Bearer t-clerk"}})
                .status,
            200);
}

TEST_F(shop_server, too_many_connections_are_turned_away_with_503) {
  cleave::app_config cfg;
  cfg.max_connections = 1;
  start(cfg);
  http_connection first(port);
  ASSERT_EQ(first.request("GET", "/health").status, 200);  // first holds the only slot
  auto r = http(port, "GET", "/health");
  expect_problem(r, 503, "/problems/unavailable");
  EXPECT_EQ(r.headers["retry-after"], "1");
}

TEST_F(shop_server, waiting_reads_hold_no_worker_and_a_token_never_issued_is_refused_at_once) {
  cleave::app_config cfg;
  cfg.run_projector = false;  // the view stays behind until the projector starts below
  cfg.max_parked_reads = 64;
  start(cfg);
  auto placed = http(port, "POST", "/commands/shop.place_order",
                     R"({"order_id":"o1","customer_id":"ada",)"
                     R"("lines":[{"product_id":"mug","quantity":1}]})");
  ASSERT_EQ(placed.status, 200) << placed.body;
  const auto token = placed.headers["cleave-position"];
  auto read = [this](std::string position) {
    return http(port, "POST", "/queries/shop.order_summary", R"({"order_id":"o1"})",
                {{"Content-Type", "application/json"}, {"Cleave-Min-Position", position}});
  };
  std::vector<std::future<cleave::testing::http_reply>> never_issued, waiting;
  auto wait_parked = [&](std::size_t n) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (app->projections().parked() < n && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return app->projections().parked();
  };
  // Reads of a position no command returned, and more reads waiting for the view than there
  // are workers (4), all at once.
  for (int i = 0; i < 32; ++i) {
    waiting.push_back(std::async(std::launch::async, read, token));
    if (i % 2) never_issued.push_back(std::async(std::launch::async, read, "0.ffffffff.0"));
  }
  for (auto& f : never_issued) {
    const auto r = f.get();
    expect_problem(r, 400, "/problems/validation");
    EXPECT_THAT(r.body, HasSubstr("has not issued"));
  }
  // Also for a query of the write tables, which has nothing to wait for.
  const auto stock_past_the_end = http(port, "GET", "/queries/shop.product_stock?product_id=mug",
                                       "", {{"Cleave-Min-Position", "0.ffffffff.0"}});
  expect_problem(stock_past_the_end, 400, "/problems/validation");
  EXPECT_THAT(stock_past_the_end.body, HasSubstr("has not issued"));
  ASSERT_EQ(wait_parked(32), 32u);
  // Meanwhile the server answers everything else as usual.
  for (const std::string target : {"/health", "/queries/shop.product_stock?product_id=mug"}) {
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(http(port, "GET", target).status, 200) << target;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1)) << target;
  }
  // Past the bound on parked reads: turned away.
  for (int i = 0; i < 32; ++i) waiting.push_back(std::async(std::launch::async, read, token));
  ASSERT_EQ(wait_parked(64), 64u);
  auto over = read(token);
  expect_problem(over, 503, "/problems/unavailable");
  EXPECT_EQ(over.headers["retry-after"], "1");
  // The projector catches up: every parked read answers with the order.
  app->projections().start();
  for (auto& f : waiting) {
    const auto r = f.get();
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(body(r)["result"]["order_id"], "o1");
  }
}

TEST_F(shop_server, keep_alive_serves_several_requests_on_one_connection) {
  start();
  http_connection c(port);
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(c.request("GET", "/queries/shop.product_stock?product_id=mug").status, 200);
}

TEST_F(shop_server, a_half_sent_request_does_not_hold_up_others) {
  start();
  http_connection stalled(port);
  stalled.send_raw("POST /commands/shop.restock HTTP/1.1\r\nHost: x\r\nContent-Le");
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(http(port, "GET", "/health").status, 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
}

TEST_F(shop_server, openapi_lists_every_command_and_query_with_required_fields) {
  start();
  auto doc = body(http(port, "GET", "/openapi.json"));
  EXPECT_EQ(doc["openapi"], "3.1.0");
  for (const auto* path : {"/commands/shop.place_order", "/commands/shop.cancel_order",
                           "/queries/shop.order_summary", "/queries/shop.top_products"})
    EXPECT_TRUE(doc["paths"].contains(path)) << path;
  const auto& schema = doc["paths"]["/commands/shop.place_order"]["post"]["requestBody"]["content"]
                          ["application/json"]["schema"];
  EXPECT_EQ(schema["required"], (json{"order_id", "customer_id", "lines"}));
  EXPECT_EQ(schema["properties"]["lines"]["items"]["properties"]["quantity"]["type"], "integer");
}

TEST_F(shop_server, metrics_count_requests_and_messages) {
  start();
  (void)http(port, "GET", "/queries/shop.product_stock?product_id=mug");
  (void)http(port, "POST", "/commands/shop.restock", R"({"product_id":"nope","quantity":1})");
  auto m = http(port, "GET", "/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_THAT(m.body,
              HasSubstr(R"(cleave_http_requests_total{route="/queries/{name}",status="200"} 1)"));
  EXPECT_THAT(
      m.body,
      HasSubstr(
          R"(cleave_messages_total{kind="command",name="shop.restock",outcome="not_found"} 1)"));
  EXPECT_THAT(m.body, HasSubstr("cleave_http_request_duration_seconds_bucket"));
}

TEST_F(shop_server, serves_the_web_ui) {
  start();
  auto page = http(port, "GET", "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_THAT(page.headers["content-type"], HasSubstr("text/html"));
  expect_problem(http(port, "GET", "/../../etc/passwd"), 404, "/problems/not-found");
}

TEST_F(shop_server, stopping_finishes_in_flight_commands_and_loses_none) {
  start();
  const auto before = stock("mug");
  auto in_flight = std::async(std::launch::async, [&] {
    return http(port, "POST", "/commands/test.slow_restock",
                R"({"product_id":"mug","millis":400})");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->stop();
  auto r = in_flight.get();
  EXPECT_EQ(r.status, 200) << "an acknowledged-to-be command was cut off";
  server.reset();
  auto after = app->queries().ask(shop::product_stock{"mug"});
  ASSERT_TRUE(after);
  EXPECT_EQ(after->stock, before + 1);
}

// Runs a command line; returns its exit code and what it printed on stdout.
std::pair<int, std::string> run(const std::string& command) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  char buf[4096];
  while (auto n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// How many answers to `query` came from the answer cache, as /metrics counts them.
int cached_answers(std::uint16_t port, const std::string& query) {
  const auto m = http(port, "GET", "/metrics").body;
  const std::string line = "cleave_http_cached_answers_total{name=\"" + query + "\"} ";
  const auto at = m.find(line);
  return at == std::string::npos ? 0 : std::stoi(m.substr(at + line.size()));
}

// GETs `target` on `c` until an answer comes from the cache (the projector's own commits, such
// as its lease's renewal, may come between two GETs); that answer, or the last one read.
cleave::testing::http_reply get_until_cached(
    http_connection& c, std::uint16_t port, const std::string& target, const std::string& query,
    const std::map<std::string, std::string>& headers = {}) {
  cleave::testing::http_reply r;
  for (int i = 0; i < 20; ++i) {
    const int before = cached_answers(port, query);
    r = c.request("GET", target, "", headers);
    if (cached_answers(port, query) > before) break;
  }
  return r;
}

TEST_F(shop_server, a_cached_answer_is_given_only_while_nothing_was_committed_by_any_process) {
  start();
  const std::string mug = "/queries/shop.product_stock?product_id=mug";
  const std::string query = "shop.product_stock";
  http_connection c(port);  // one connection: one I/O thread, whose cache it reads
  auto first = c.request("GET", mug);
  ASSERT_EQ(first.status, 200) << first.body;
  std::int64_t expected = json::parse(first.body)["result"]["stock"];
  auto again = get_until_cached(c, port, mug, query);
  ASSERT_GE(cached_answers(port, query), 1) << "never answered from the cache";
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(again.headers["cleave-position"], first.headers["cleave-position"]);
  EXPECT_EQ(again.headers["content-type"], "application/json");
  EXPECT_EQ(again.headers["content-length"], std::to_string(first.body.size()));
  // Every acknowledged command is in the next answer, on this connection or another.
  for (int i = 1; i <= 10; ++i) {
    auto sent = http(port, "POST", "/commands/shop.restock",
                     R"({"product_id":"mug","quantity":)" + std::to_string(i) + "}");
    ASSERT_EQ(sent.status, 200) << sent.body;
    expected += i;
    auto read = c.request("GET", mug);
    ASSERT_EQ(json::parse(read.body)["result"]["stock"], expected) << "a stale answer after " << i;
    EXPECT_EQ(json::parse(get_until_cached(c, port, mug, query).body)["result"]["stock"], expected);
  }
  // A commit by another process on the same database file: the next answer has it.
  get_until_cached(c, port, mug, query);
  const std::string restock = "CLEAVE_DATABASE=" + dir.file("shop.db") +
                              " CLEAVE_LOG_LEVEL=error " + SHOP_BINARY +
                              R"( send shop.restock '{"product_id":"mug","quantity":100}')";
  ASSERT_EQ(run(restock).first, 0);
  EXPECT_EQ(json::parse(c.request("GET", mug).body)["result"]["stock"], expected + 100);
  // A client that asks caches to step aside is read afresh, and so is a query that does not
  // cache its answers.
  const int cached = cached_answers(port, query);
  for (const auto& skip : {"no-cache", "no-store", "max-age=0"})
    EXPECT_EQ(c.request("GET", mug, "", {{"Cache-Control", skip}}).status, 200);
  EXPECT_EQ(c.request("GET", mug, "", {{"Cleave-Consistency", "eventual"}}).status, 200);
  EXPECT_EQ(c.request("GET", "/queries/shop.list_customers").status, 200);
  EXPECT_EQ(c.request("GET", "/queries/shop.list_customers").status, 200);
  EXPECT_EQ(cached_answers(port, query), cached);
  EXPECT_EQ(cached_answers(port, "shop.list_customers"), 0);
}

TEST_F(shop_server, a_cached_answer_carries_each_request_s_own_correlation_id) {
  start();
  const std::string mug = "/queries/shop.product_stock?product_id=mug";
  const std::string query = "shop.product_stock";
  http_connection c(port);
  auto a = get_until_cached(c, port, mug, query, {{"X-Correlation-Id", "order-7"}});
  auto b = get_until_cached(c, port, mug, query, {{"X-Correlation-Id", "order-8"}});
  auto fresh1 = get_until_cached(c, port, mug, query);
  auto fresh2 = get_until_cached(c, port, mug, query);
  EXPECT_GE(cached_answers(port, query), 4);
  EXPECT_EQ(a.headers["x-correlation-id"], "order-7");
  EXPECT_EQ(b.headers["x-correlation-id"], "order-8");
  EXPECT_EQ(fresh1.headers["x-correlation-id"].size(), 16u);
  EXPECT_NE(fresh1.headers["x-correlation-id"], fresh2.headers["x-correlation-id"]);
  EXPECT_EQ(a.body, fresh2.body);
}

TEST_F(shop_server, a_cached_answer_is_never_given_to_a_caller_its_token_would_not_let_in) {
  cleave::app_config cfg;
  cfg.tokens["t-clerk"] = cleave::principal{"clerk", {"staff"}};
  cfg.tokens["t-guest"] = cleave::principal{"guest", {}};
  cfg.roles["shop.product_stock"] = "staff";
  start(cfg);
  const std::string mug = "/queries/shop.product_stock?product_id=mug";
  const std::string query = "shop.product_stock";
  const std::map<std::string, std::string> clerk{{"Authorization", "Bearer t-clerk"}};
  http_connection c(port);
  // The others are refused while the clerk's answer is in the cache: the clerk's asks before
  // and after them both come from it (no commit came between).
  bool proven = false;
  for (int i = 0; i < 20 && !proven; ++i) {
    ASSERT_EQ(get_until_cached(c, port, mug, query, clerk).status, 200);
    const int before = cached_answers(port, query);
    expect_problem(c.request("GET", mug, "", {{"Authorization", "Bearer t-guest"}}), 403,
                   "/problems/forbidden");
    expect_problem(c.request("GET", mug), 401, "/problems/unauthorized");
    expect_problem(c.request("GET", mug, "", {{"Authorization", "Bearer t-clerkX"}}), 401,
                   "/problems/unauthorized");
    EXPECT_EQ(cached_answers(port, query), before);
    ASSERT_EQ(c.request("GET", mug, "", clerk).status, 200);
    proven = cached_answers(port, query) == before + 1;
  }
  EXPECT_TRUE(proven) << "a commit always came between the clerk's answers";
}

// An answer read while a command commits is not kept: the next ask reads again and sees it.
TEST_F(shop_server, an_answer_read_while_a_command_commits_is_not_kept) {
  cleave::app_config cfg;
  cfg.io_threads = 2;  // the query's connection and the command's on different I/O threads
  start(cfg);
  const std::string slow = "/queries/test.slow_stock?product_id=mug&millis=300";
  http_connection reader(port), writer(port);
  const auto before =
      json::parse(reader.request("GET", "/queries/shop.product_stock?product_id=mug")
                      .body)["result"]["stock"]
          .get<std::int64_t>();
  auto answer = std::async(std::launch::async, [&] { return reader.request("GET", slow); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_EQ(writer.request("POST", "/commands/shop.restock", R"({"product_id":"mug","quantity":5})")
                .status,
            200);
  EXPECT_EQ(answer.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the command did not commit while the query read";
  EXPECT_EQ(json::parse(answer.get().body)["result"], before) << "read before the commit";
  EXPECT_EQ(json::parse(reader.request("GET", slow).body)["result"], before + 5);
}

TEST_F(shop_server, the_cleave_tool_sends_and_asks_over_http) {
  start();
  const std::string cli =
      std::string(CLEAVE_CLI) + " --url http://127.0.0.1:" + std::to_string(port);
  auto [code, out] = run(cli + R"( send shop.restock '{"product_id":"mug","quantity":5}')");
  EXPECT_EQ(code, 0);
  EXPECT_THAT(out, HasSubstr("\"position\""));
  auto [ask_code, ask_out] = run(cli + R"( ask shop.product_stock '{"product_id":"mug"}')");
  EXPECT_EQ(ask_code, 0);
  EXPECT_EQ(json::parse(ask_out)["result"]["stock"], 45);
  auto [refused, refused_out] =
      run(cli + R"( send shop.restock '{"product_id":"mug","quantity":-1}' 2>/dev/null)");
  EXPECT_EQ(refused, 2);
}

TEST_F(shop_server, the_admin_api_lists_views_rebuilds_them_and_metrics_show_their_lag) {
  start();
  auto placed =
      http(port, "POST", "/commands/shop.place_order",
           R"({"order_id":"o9","customer_id":"alan","lines":[{"product_id":"tea","quantity":1}]})");
  ASSERT_EQ(placed.status, 200) << placed.body;
  // Strong: the view has every command committed before the query.
  auto strong = http(port, "POST", "/queries/shop.customer_orders", R"({"customer_id":"alan"})",
                     {{"Content-Type", "application/json"}, {"Cleave-Consistency", "strong"}});
  ASSERT_EQ(strong.status, 200) << strong.body;
  EXPECT_EQ(body(strong)["result"][0]["order_id"], "o9");
  expect_problem(http(port, "POST", "/queries/shop.customer_orders", R"({"customer_id":"alan"})",
                      {{"Content-Type", "application/json"}, {"Cleave-Consistency", "soon"}}),
                 400, "/problems/validation");
  auto list = http(port, "GET", "/admin/projections");
  ASSERT_EQ(list.status, 200) << list.body;
  auto views = body(list)["projections"];
  ASSERT_EQ(views.size(), 3u);
  EXPECT_EQ(views[0]["name"], "order_summaries");
  EXPECT_EQ(views[1]["name"], "top_products");
  EXPECT_EQ(views[1]["mode"], "materialized");
  EXPECT_EQ(views[2]["name"], "order_payments");  // the payment deadline's process manager
  // The placed order waits for its payment: its cancellation is scheduled, and its row says when.
  EXPECT_TRUE(body(strong)["result"][0]["pay_by"].is_number());
  auto schedules = http(port, "GET", "/admin/schedules");
  ASSERT_EQ(schedules.status, 200) << schedules.body;
  EXPECT_GE(body(schedules)["pending"], 1);
  EXPECT_EQ(body(schedules)["schedules"][0]["command"], "shop.cancel_order");
  EXPECT_EQ(body(schedules)["schedules"][0]["origin"], "order_payments");
  // The best sellers come from the materialized view, refreshed for a read that waits.
  auto top = http(port, "POST", "/queries/shop.top_products", R"({"limit":1})",
                  {{"Content-Type", "application/json"},
                   {"Cleave-Min-Position", placed.headers["cleave-position"]}});
  ASSERT_EQ(top.status, 200) << top.body;
  EXPECT_EQ(body(top)["result"][0]["product_id"], "tea");
  EXPECT_EQ(views[0]["mode"], "async");
  EXPECT_EQ(views[0]["lag_events"], 0);
  EXPECT_EQ(views[0]["checkpoint"], placed.headers["cleave-position"]);
  auto metrics = http(port, "GET", "/metrics");
  EXPECT_THAT(metrics.body,
              HasSubstr("cleave_projection_lag_events{projection=\"order_summaries\"} 0"));
  EXPECT_THAT(metrics.body,
              HasSubstr("cleave_projection_lag_seconds{projection=\"order_summaries\"}"));
  // A rebuild runs in the background; the listing shows it finish.
  EXPECT_EQ(http(port, "POST", "/admin/projections/order_summaries/rebuild").status, 202);
  json job;
  for (int i = 0; i < 500; ++i) {
    job = body(http(port, "GET", "/admin/projections"))["projections"][0]["rebuild"];
    if (job.is_object() && !job["running"].get<bool>()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(job["swapped"], true) << job.dump();
  EXPECT_EQ(job["error"], "");
  auto again = http(port, "POST", "/queries/shop.order_summary", R"({"order_id":"o9"})",
                    {{"Content-Type", "application/json"}, {"Cleave-Consistency", "strong"}});
  EXPECT_EQ(body(again)["result"]["buyer"]["name"], "Alan Turing");
  EXPECT_EQ(http(port, "GET", "/admin/projections/order_summaries/dead-letters").status, 200);
  expect_problem(http(port, "POST", "/admin/projections/nope/rebuild"), 404, "/problems/not-found");
}

TEST_F(shop_server, the_admin_api_needs_the_admin_role_when_tokens_are_set) {
  cleave::app_config cfg;
  cfg.tokens["clerk"] = cleave::principal{"clerk", {"staff"}};
  cfg.tokens["boss"] = cleave::principal{"boss", {"admin"}};
  start(cfg);
  EXPECT_EQ(http(port, "GET", "/admin/projections").status, 401);
  EXPECT_EQ(http(port, "GET", "/admin/projections", "", {{"Authorization", "Bearer clerk"}}).status,
            403);
  EXPECT_EQ(http(port, "GET", "/admin/projections", "", {{"Authorization", "Bearer boss"}}).status,
            200);
}

TEST_F(shop_server, the_application_verbs_run_its_handlers_directly) {
  start();
  auto verb = [&](std::vector<std::string> args) { return run_verb(std::move(args)); };
  auto [code, out] = verb({"send", "shop.restock", R"({"product_id":"tea","quantity":5})"});
  EXPECT_EQ(code, 0);
  EXPECT_EQ(json::parse(out)["result"], 30);
  auto [ask_code, ask_out] = verb({"ask", "shop.product_stock", R"({"product_id":"tea"})"});
  EXPECT_EQ(json::parse(ask_out)["result"]["stock"], 30);
  EXPECT_EQ(verb({"send", "shop.restock", R"({"product_id":"tea"})"}).first, 2);
  auto [tail_code, tail] = verb({"events", "tail"});
  EXPECT_EQ(tail_code, 0);
  EXPECT_THAT(tail, HasSubstr(R"("type":"shop.product_restocked")"));
  auto [status_code, status] = verb({"status"});
  EXPECT_EQ(json::parse(status)["migrations"]["shop"], (json{1, 2}));
  // An order placed from the command line waits for its payment: a strong read of the orders
  // waits for the process manager too, which scheduled the order's cancellation.
  EXPECT_EQ(
      verb({"send", "shop.place_order",
            R"({"order_id":"v1","customer_id":"ada","lines":[{"product_id":"tea","quantity":1}]})"})
          .first,
      0);
  auto [orders_code, orders] =
      verb({"ask", "shop.customer_orders", R"({"customer_id":"ada"})", "--consistency", "strong"});
  EXPECT_EQ(orders_code, 0);
  EXPECT_THAT(orders, HasSubstr(R"("pay_by":)"));
  auto [schedule_code, schedule] = verb({"schedule", "list"});
  EXPECT_EQ(schedule_code, 0);
  EXPECT_EQ(json::parse(schedule)[0]["command"], "shop.cancel_order");
  EXPECT_EQ(json::parse(schedule)[0]["instance"], "v1");
  EXPECT_EQ(json::parse(status)["projections"][0]["name"], "order_summaries");
  auto [list_code, list] = verb({"projections", "list"});
  EXPECT_EQ(list_code, 0);
  EXPECT_EQ(json::parse(list)[0]["mode"], "async");
  auto [rebuild_code, rebuilt] = verb({"projections", "rebuild", "order_summaries", "--verify"});
  EXPECT_EQ(rebuild_code, 0) << rebuilt;
  EXPECT_EQ(json::parse(rebuilt)["swapped"], true);
  EXPECT_EQ(json::parse(rebuilt)["differences"], 0);
  EXPECT_EQ(verb({"projections", "rebuild", "nope"}).first, 2);
  auto [ask_strong_code, strong] =
      verb({"ask", "shop.customer_orders", R"({"customer_id":"ada"})", "--consistency", "strong"});
  EXPECT_EQ(ask_strong_code, 0);
  EXPECT_TRUE(json::parse(strong)["result"].is_array());
  EXPECT_EQ(verb({"ask", "shop.customer_orders", "{}", "--consistency", "bogus"}).first, 2);
  EXPECT_EQ(verb({"no-such-verb"}).first, 2);
}

TEST_F(shop_server, an_idempotency_key_replays_the_first_outcome_and_has_one_effect) {
  start();
  auto with_key = [](std::string key) {
    return std::map<std::string, std::string>{{"Content-Type", "application/json"},
                                              {"Idempotency-Key", std::move(key)}};
  };
  const std::string restock = R"({"product_id":"mug","quantity":5})";
  const auto before = stock("mug");
  auto first = http(port, "POST", "/commands/shop.restock", restock, with_key("k-1"));
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_FALSE(first.headers.contains("idempotent-replayed"));
  auto retry = http(port, "POST", "/commands/shop.restock", restock, with_key("k-1"));
  EXPECT_EQ(retry.status, 200);
  EXPECT_EQ(retry.body, first.body);
  EXPECT_EQ(retry.headers["idempotent-replayed"], "true");
  EXPECT_EQ(retry.headers["cleave-position"], first.headers["cleave-position"]);
  // The key as a structured-field string is the same key.
  EXPECT_EQ(http(port, "POST", "/commands/shop.restock", restock, with_key(R"("k-1")")).body,
            first.body);
  EXPECT_EQ(stock("mug"), before + 5);

  // The key reused for another payload or another command: refused, and nothing happens.
  auto other_payload = http(port, "POST", "/commands/shop.restock",
                            R"({"product_id":"mug","quantity":6})", with_key("k-1"));
  expect_problem(other_payload, 422, "/problems/idempotency-key-reused");
  EXPECT_FALSE(other_payload.headers.contains("idempotent-replayed"));
  expect_problem(
      http(port, "POST", "/commands/shop.cancel_order", R"({"order_id":"o1"})", with_key("k-1")),
      422, "/problems/idempotency-key-reused");
  EXPECT_EQ(stock("mug"), before + 5);

  // A refusal replays as it was first answered, even after it would now succeed.
  const std::string order =
      R"({"order_id":"big","customer_id":"ada","lines":[{"product_id":"cosy","quantity":100}]})";
  auto refused = http(port, "POST", "/commands/shop.place_order", order, with_key("k-2"));
  expect_problem(refused, 422, "/problems/rejected");
  ASSERT_EQ(http(port, "POST", "/commands/shop.restock", R"({"product_id":"cosy","quantity":500})")
                .status,
            200);
  auto refused_again = http(port, "POST", "/commands/shop.place_order", order, with_key("k-2"));
  EXPECT_EQ(refused_again.status, 422);
  EXPECT_EQ(refused_again.body, refused.body);
  EXPECT_EQ(refused_again.headers["idempotent-replayed"], "true");

  // Malformed keys are refused before anything runs; a query ignores the header.
  for (const std::string& bad : std::vector<std::string>{"", "two words", std::string(256, 'k'),
                                                         "caf\xc3\xa9", R"("open)", R"("a\b")"})
    expect_problem(http(port, "POST", "/commands/shop.restock", restock, with_key(bad)), 400,
                   "/problems/validation");
  EXPECT_EQ(stock("mug"), before + 5);
  EXPECT_EQ(
      http(port, "POST", "/queries/shop.product_stock", R"({"product_id":"mug"})", with_key("k-1"))
          .status,
      200);
}

TEST_F(shop_server, concurrent_requests_with_one_key_have_one_effect_and_identical_answers) {
  start();
  const auto before = stock("tea");
  constexpr int clients = 8;
  std::vector<std::future<cleave::testing::http_reply>> replies;
  for (int i = 0; i < clients; ++i)
    replies.push_back(std::async(std::launch::async, [&] {
      return http(port, "POST", "/commands/test.slow_restock",
                  R"({"product_id":"tea","millis":100})",
                  {{"Content-Type", "application/json"}, {"Idempotency-Key", "same-click"}});
    }));
  std::vector<cleave::testing::http_reply> answers;
  for (auto& r : replies) answers.push_back(r.get());
  int replayed = 0;
  for (const auto& a : answers) {
    EXPECT_EQ(a.status, 200) << a.body;
    EXPECT_EQ(a.body, answers[0].body);
    replayed += a.headers.contains("idempotent-replayed") ? 1 : 0;
  }
  EXPECT_EQ(replayed, clients - 1);
  EXPECT_EQ(stock("tea"), before + 1);
}

TEST_F(shop_server, idempotency_keys_are_scoped_to_the_principal) {
  cleave::app_config cfg;
  cfg.tokens["t-ann"] = cleave::principal{"ann", {"staff"}};
  cfg.tokens["t-bob"] = cleave::principal{"bob", {"staff"}};
  start(cfg);
  auto as = [](std::string token) {
    return std::map<std::string, std::string>{{"Content-Type", "application/json"},
                                              {"Authorization", "Bearer " + token},
                                              {"Idempotency-Key", "restock-1"}};
  };
  auto stock_of_kettle = [&] {
    return body(http(port, "POST", "/queries/shop.product_stock", R"({"product_id":"kettle"})",
                     {{"Content-Type", "application/json"},
                      {"Authorization", "Bearer t-ann"}}))["result"]["stock"]
        .get<std::int64_t>();
  };
  const auto before = stock_of_kettle();
  const std::string restock = R"({"product_id":"kettle","quantity":1})";
  auto ann = http(port, "POST", "/commands/shop.restock", restock, as("t-ann"));
  auto bob = http(port, "POST", "/commands/shop.restock", restock, as("t-bob"));
  ASSERT_EQ(ann.status, 200) << ann.body;
  ASSERT_EQ(bob.status, 200) << bob.body;
  EXPECT_FALSE(bob.headers.contains("idempotent-replayed"));
  EXPECT_EQ(http(port, "POST", "/commands/shop.restock", restock, as("t-ann"))
                .headers["idempotent-replayed"],
            "true");
  EXPECT_EQ(stock_of_kettle(), before + 2);
}

TEST_F(shop_server, the_cleave_tool_and_the_send_verb_take_an_idempotency_key) {
  start();
  const std::string cli =
      std::string(CLEAVE_CLI) + " --url http://127.0.0.1:" + std::to_string(port);
  const auto before = stock("mug");
  const std::string send =
      cli + R"( send shop.restock '{"product_id":"mug","quantity":5}' --id r-1)";
  auto [code, out] = run(send);
  auto [again_code, again] = run(send);
  EXPECT_EQ(code, 0);
  EXPECT_EQ(again_code, 0);
  EXPECT_EQ(again, out);
  EXPECT_EQ(stock("mug"), before + 5);
  EXPECT_EQ(
      run(cli + R"( send shop.restock '{"product_id":"mug","quantity":6}' --id r-1 2>&1)").first,
      2);

  auto verb = [&](std::vector<std::string> args) { return run_verb(std::move(args)); };
  const std::vector<std::string> restock{"send", "shop.restock",
                                         R"({"product_id":"mug","quantity":2})", "--id", "v-1"};
  auto first = verb(restock);
  auto retry = verb(restock);
  EXPECT_EQ(first.first, 0);
  EXPECT_EQ(retry, first);
  EXPECT_EQ(stock("mug"), before + 7);
  EXPECT_EQ(
      verb({"send", "shop.restock", R"({"product_id":"mug","quantity":3})", "--id", "v-1"}).first,
      2);
  EXPECT_EQ(
      verb({"send", "shop.restock", R"({"product_id":"mug","quantity":3})", "--id", ""}).first, 2);
  EXPECT_EQ(stock("mug"), before + 7);
}

}  // namespace
