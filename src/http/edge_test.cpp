// The HTTP edge over real sockets: static files stay inside their root, and malformed, odd-cased
// or unauthenticated requests get the problem a user would expect, each with a correlation id.

#include <ifaddrs.h>
#include <netinet/in.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/http/server.hpp>

#include "http_client.hpp"
#include "router.hpp"
#include "temp_dir.hpp"

namespace edge {
struct note_down {
  std::string id;
  std::int64_t amount = 0;
};
CLEAVE_COMMAND(note_down, "edge.note_down", id, amount)

struct total {
  std::string id;
  using response = std::int64_t;
};
CLEAVE_QUERY(total, "edge.total", id)

constexpr cleave::migration schema[] = {
    {1, "notes", "create table notes(id text not null, amount bigint not null)"}};
}  // namespace edge

namespace {

namespace fs = std::filesystem;
using cleave::json;
using cleave::testing::http;
using cleave::testing::http_connection;
using cleave::testing::http_reply;
using testing::HasSubstr;
using testing::Not;

const std::string secret_text = "TOP-SECRET-7f3a";

void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

struct edge_server : testing::Test {
  cleave::testing::temp_dir dir;
  fs::path root = dir.path() / "www";
  std::unique_ptr<cleave::app> app;
  std::unique_ptr<cleave::http::server> server;
  std::uint16_t port = 0;
  // A note_down with the id "hold" waits in its handler until released (or 3 s pass).
  std::mutex hold_mutex;
  std::condition_variable hold_cv;
  bool holding = false, released = false, hold_over = false;

  edge_server() {
    // The root, with a secret beside it and symlinks inside it that lead to the secret.
    write_file(root / "index.html", "<h1>home</h1>");
    write_file(root / "app.js", "console.log(1)");
    write_file(root / "with space.txt", "spaced");
    write_file(root / "docs" / "index.html", "<h1>docs</h1>");
    write_file(root / "docs" / "guide.html", "<h1>guide</h1>");
    fs::create_directories(root / "empty");
    write_file(dir.path() / "secret.txt", secret_text);
    write_file(root / ".env", secret_text);  // dot-files inside the root are private too
    write_file(root / ".git" / "config", secret_text);
    fs::create_symlink(dir.path() / "secret.txt", root / "leak.txt");
    fs::create_directory_symlink(dir.path(), root / "up");
    fs::create_symlink("guide.html", root / "docs" / "alias.html");  // inside: allowed
  }

  void start(cleave::app_config cfg = {}) {
    cfg.database = dir.file("edge.db");
    if (cfg.listen == cleave::app_config{}.listen) cfg.listen = "127.0.0.1:0";
    cfg.static_dir = root;
    app = std::make_unique<cleave::app>(cfg);
    app->add_migrations("edge", edge::schema);
    app->migrate();
    app->commands().add(
        [this](const edge::note_down& c, cleave::write_context& tx) -> cleave::result<void> {
          if (c.id == "taken") return cleave::conflict("a note with this id exists already");
          if (c.id == "hold") {
            std::unique_lock lock(hold_mutex);
            holding = true;
            hold_cv.notify_all();
            hold_cv.wait_for(lock, std::chrono::seconds(3), [&] { return released; });
            hold_over = true;
          }
          tx.exec("insert into notes(id, amount) values ($1, $2)", c.id, c.amount);
          return {};
        });
    app->queries().add([](const edge::total& q,
                          const cleave::read_context& db) -> cleave::result<std::int64_t> {
      return db.one<std::int64_t>("select coalesce(sum(amount), 0) from notes where id = $1", q.id);
    });
    server = std::make_unique<cleave::http::server>(*app);
    server->start();
    port = server->port();
  }
  void TearDown() override {
    if (server) server->stop();
  }

  // Asserts the reply is a problem with this status and type, carrying a correlation id in its
  // body and the same one in X-Correlation-Id.
  void expect_problem(const http_reply& r, int status, const std::string& type,
                      const std::string& what = "") {
    SCOPED_TRACE(what);
    EXPECT_EQ(r.status, status) << r.body;
    EXPECT_EQ(r.headers.count("content-type") ? r.headers.at("content-type") : "",
              "application/problem+json");
    auto p = json::parse(r.body, nullptr, false);
    ASSERT_FALSE(p.is_discarded()) << r.body;
    EXPECT_EQ(p["type"], type) << r.body;
    EXPECT_EQ(p["status"], status);
    ASSERT_TRUE(p.contains("correlation_id")) << r.body;
    const auto id = p["correlation_id"].get<std::string>();
    EXPECT_FALSE(id.empty());
    EXPECT_EQ(r.headers.count("x-correlation-id") ? r.headers.at("x-correlation-id") : "", id);
  }
};

TEST_F(edge_server, static_files_never_come_from_outside_the_root) {
  start();
  const std::string outside = (dir.path() / "secret.txt").string();  // absolute: /tmp/…
  const std::string hostile[] = {
      "/" + outside,               // //tmp/…/secret.txt
      "/%2F" + outside.substr(1),  // the same, the slash encoded
      "/%2f%2f" + outside.substr(1),
      "/../secret.txt",
      "/%2e%2e/secret.txt",
      "/%2E%2e/secret.txt",
      "/.%2e/secret.txt",
      "/%2e./secret.txt",
      "/..%2fsecret.txt",
      "/%2e%2e%2fsecret.txt",
      "/docs/../../secret.txt",
      "/docs/%2e%2e/%2e%2e/secret.txt",
      "/docs/..%2F..%2Fsecret.txt",
      "/..\\secret.txt",
      "/..%5csecret.txt",
      "/%5c..%5csecret.txt",
      "/leak.txt",       // a symlink to the secret
      "/up/secret.txt",  // a directory symlink leading out
      "/index.html%00.png",
      "/%00",
      "/.",
      "/./",
      "/%2e",
      "/%2e/",
      "/docs/.",
      "/docs/./guide.html",
      "/docs//guide.html",
      "/.env",
      "/%2eenv",
      "/.git/config",
      "//",
      "/%",
      "/%zz",
      "/missing.html",
      "/empty",
      "/empty/",
  };
  for (const auto& path : hostile) {
    auto r = http(port, "GET", path);
    expect_problem(r, 404, "/problems/not-found", path);
    EXPECT_THAT(r.body, Not(HasSubstr(secret_text))) << path;
    EXPECT_THAT(r.body, Not(HasSubstr(dir.path().string()))) << path;
  }
}

TEST_F(edge_server, static_files_inside_the_root_are_served_and_a_directory_serves_its_index) {
  start();
  const std::pair<std::string, std::string> served[] = {
      {"/", "<h1>home</h1>"},
      {"/index.html", "<h1>home</h1>"},
      {"/docs", "<h1>docs</h1>"},
      {"/docs/", "<h1>docs</h1>"},
      {"/docs/guide.html", "<h1>guide</h1>"},
      {"/docs/alias.html", "<h1>guide</h1>"},  // a symlink that stays inside
      {"/%64ocs/guide.html", "<h1>guide</h1>"},
      {"/with%20space.txt", "spaced"},
      {"/app.js", "console.log(1)"},
  };
  for (const auto& [path, text] : served) {
    auto r = http(port, "GET", path);
    EXPECT_EQ(r.status, 200) << path << ": " << r.body;
    EXPECT_EQ(r.body, text) << path;
  }
  EXPECT_THAT(http(port, "GET", "/").headers["content-type"], HasSubstr("text/html"));
  EXPECT_THAT(http(port, "GET", "/app.js").headers["content-type"], HasSubstr("javascript"));
}

TEST_F(edge_server, a_malformed_chunked_body_gets_a_400_problem) {
  start();
  http_connection c(port);
  c.send_raw(
      "POST /commands/edge.note_down HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n");
  expect_problem(c.read_reply(), 400, "/problems/validation");
  // A well-formed chunked body is fine.
  http_connection good(port);
  good.send_raw(
      "POST /commands/edge.note_down HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\n\r\n16\r\n{\"id\":\"a\",\"amount\":12}\r\n0\r\n\r\n");
  EXPECT_EQ(good.read_reply().status, 200);
}

TEST_F(edge_server, the_media_type_is_compared_case_insensitively) {
  start();
  for (const auto* type : {"APPLICATION/JSON; charset=utf-8", "Application/Json",
                           "application/json ; charset=UTF-8"}) {
    auto r = http(port, "POST", "/commands/edge.note_down", R"({"id":"a","amount":1})",
                  {{"Content-Type", type}});
    EXPECT_EQ(r.status, 200) << type << ": " << r.body;
  }
  expect_problem(http(port, "POST", "/commands/edge.note_down", R"({"id":"a","amount":1})",
                      {{"Content-Type", "application/jsonx"}}),
                 415, "/problems/unsupported-media-type");
}

TEST_F(edge_server, on_sqlite_a_query_is_answered_while_every_worker_runs_a_command) {
  cleave::app_config cfg;
  cfg.workers = 1;
  cfg.io_threads = 2;
  start(cfg);
  ASSERT_EQ(http(port, "POST", "/commands/edge.note_down", R"({"id":"a","amount":5})",
                 {{"Content-Type", "application/json"}})
                .status,
            200);
  int held_status = 0;
  std::thread sender([&] {
    held_status = http(port, "POST", "/commands/edge.note_down", R"({"id":"hold","amount":1})",
                       {{"Content-Type", "application/json"}})
                      .status;
  });
  {
    std::unique_lock lock(hold_mutex);
    ASSERT_TRUE(hold_cv.wait_for(lock, std::chrono::seconds(10), [&] { return holding; }));
  }
  // The only worker is in the held command (which holds the writer too): the query is read on
  // its connection's I/O thread, from the last commit.
  for (int i = 0; i < 4; ++i) {  // over both I/O threads
    const auto r = http(port, "GET", "/queries/edge.total?id=a");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(json::parse(r.body)["result"], 5);
  }
  {
    std::lock_guard lock(hold_mutex);
    EXPECT_FALSE(hold_over) << "the queries waited for the held command";
    released = true;
  }
  hold_cv.notify_all();
  sender.join();
  EXPECT_EQ(held_status, 200);
}

TEST_F(edge_server, a_malformed_cleave_timeout_is_a_400_and_changes_nothing) {
  start();
  const std::map<std::string, std::string> json_body{{"Content-Type", "application/json"}};
  for (const auto* bad : {"0", "-5", "1.5", "soon", "10s", "99999999999999999999999"}) {
    auto headers = json_body;
    headers["Cleave-Timeout"] = bad;
    auto r = http(port, "POST", "/commands/edge.note_down", R"({"id":"a","amount":1})", headers);
    expect_problem(r, 400, "/problems/validation", bad);
    EXPECT_THAT(r.body, HasSubstr("Cleave-Timeout"));
  }
  EXPECT_EQ(json::parse(http(port, "GET", "/queries/edge.total?id=a").body)["result"], 0);
  auto headers = json_body;
  headers["Cleave-Timeout"] = "2000";
  EXPECT_EQ(
      http(port, "POST", "/commands/edge.note_down", R"({"id":"a","amount":1})", headers).status,
      200);
}

TEST_F(edge_server, a_repeated_member_or_a_nul_is_a_400_naming_the_member_and_changes_nothing) {
  start();
  const std::map<std::string, std::string> json_body{{"Content-Type", "application/json"}};
  auto errors_of = [](const http_reply& r) { return json::parse(r.body)["errors"].dump(); };
  auto twice = http(port, "POST", "/commands/edge.note_down",
                    R"({"id":"a","amount":1,"amount":1000})", json_body);
  expect_problem(twice, 400, "/problems/validation");
  EXPECT_THAT(errors_of(twice), HasSubstr("\"amount\""));
  auto nul =
      http(port, "POST", "/commands/edge.note_down", R"({"id":"a\u0000b","amount":1})", json_body);
  expect_problem(nul, 400, "/problems/validation");
  EXPECT_THAT(errors_of(nul), HasSubstr("\"id\""));
  auto nul_in_query = http(port, "GET", "/queries/edge.total?id=a%00b");
  expect_problem(nul_in_query, 400, "/problems/validation");
  EXPECT_THAT(errors_of(nul_in_query), HasSubstr("\"id\""));
  EXPECT_EQ(json::parse(http(port, "GET", "/queries/edge.total?id=a").body)["result"], 0);
}

TEST_F(edge_server, the_bearer_scheme_is_case_insensitive_and_tokens_match_only_whole) {
  cleave::app_config cfg;
  cfg.tokens["s3cret-token"] = cleave::principal{"ann", {}};
  cfg.tokens["other-token"] = cleave::principal{"bob", {}};
  start(cfg);
  const std::string body = R"({"id":"a","amount":1})";
  auto send = [&](const std::string& authorization) {
    return http(port, "POST", "/commands/edge.note_down", body,
                {{"Content-Type", "application/json"}, {"Authorization", authorization}});
  };
  for (const auto* ok : {"Bearer s3cret-token", "bearer s3cret-token", "BEARER other-token"})
    EXPECT_EQ(send(ok).status, 200) << ok;
  for (const auto* wrong : {"Bearer s3cret", "Bearer s3cret-token2", "Bearer S3CRET-TOKEN",
                            "Bearer ", "Basic s3cret-token", "s3cret-token"})
    expect_problem(send(wrong), 401, "/problems/unauthorized", wrong);
}

TEST(same_secret, is_equality_for_any_lengths) {
  using cleave::http::detail::same_secret;
  EXPECT_TRUE(same_secret("abc", "abc"));
  EXPECT_FALSE(same_secret("abd", "abc"));
  EXPECT_FALSE(same_secret("ab", "abc"));
  EXPECT_FALSE(same_secret("abcabc", "abc"));  // repeats the secret: still not equal
  EXPECT_FALSE(same_secret("", "abc"));
  EXPECT_FALSE(same_secret("abc", ""));
  EXPECT_TRUE(same_secret("", ""));
}

TEST_F(edge_server, authentication_comes_before_anything_is_parsed_on_a_protected_server) {
  cleave::app_config cfg;
  cfg.tokens["t1"] = cleave::principal{"ann", {"admin"}};
  start(cfg);
  const std::map<std::string, std::string> json_type{{"Content-Type", "application/json"}};
  auto with = [](std::map<std::string, std::string> h, const std::string& auth) {
    h["Authorization"] = auth;
    return h;
  };
  for (const auto& auth : {std::string(), std::string("Bearer wrong")}) {
    const auto headers = auth.empty() ? json_type : with(json_type, auth);
    expect_problem(http(port, "POST", "/commands/edge.note_down", R"({"id":)", headers), 401,
                   "/problems/unauthorized", "malformed JSON " + auth);
    expect_problem(http(port, "POST", "/commands/edge.no_such", "{}", headers), 401,
                   "/problems/unauthorized", "unknown command " + auth);
    expect_problem(http(port, "GET", "/queries/edge.no_such", "", headers), 401,
                   "/problems/unauthorized", "unknown query " + auth);
    expect_problem(
        http(port, "POST", "/commands/edge.note_down", "x=1",
             auth.empty() ? std::map<std::string, std::string>{{"Content-Type", "text/plain"}}
                          : with({{"Content-Type", "text/plain"}}, auth)),
        401, "/problems/unauthorized", "not JSON " + auth);
    expect_problem(http(port, "GET", "/admin/projections", "", headers), 401,
                   "/problems/unauthorized", "admin " + auth);
  }
  // With the token, the same requests get their own answers.
  const auto authed = with(json_type, "Bearer t1");
  expect_problem(http(port, "POST", "/commands/edge.note_down", R"({"id":)", authed), 400,
                 "/problems/validation");
  expect_problem(http(port, "POST", "/commands/edge.no_such", "{}", authed), 404,
                 "/problems/unknown-message");
  EXPECT_EQ(http(port, "GET", "/admin/projections", "", authed).status, 200);
}

TEST_F(edge_server, every_problem_and_every_answer_carries_a_correlation_id) {
  cleave::app_config cfg;
  cfg.max_body_bytes = 64;
  cfg.max_header_bytes = 4096;
  start(cfg);
  expect_problem(http(port, "GET", "/health", "", {{"X-Padding", std::string(8000, 'a')}}), 431,
                 "/problems/headers-too-large", "431");
  auto put = http(port, "PUT", "/commands/edge.note_down", "{}");
  expect_problem(put, 405, "/problems/method-not-allowed", "405");
  EXPECT_EQ(put.headers["allow"], "POST");
  expect_problem(http(port, "DELETE", "/health"), 405, "/problems/method-not-allowed",
                 "405 health");
  expect_problem(http(port, "GET", "/nothing-here"), 404, "/problems/not-found", "static 404");
  expect_problem(http(port, "GET", "/."), 404, "/problems/not-found", "/.");
  expect_problem(http(port, "POST", "/elsewhere", "{}"), 404, "/problems/unknown-message",
                 "no route");
  expect_problem(http(port, "POST", "/commands/edge.note_down", std::string(100, ' ')), 413,
                 "/problems/body-too-large", "413");
  expect_problem(http(port, "POST", "/commands/edge.note_down", R"({"id":"taken","amount":1})"),
                 409, "/problems/conflict", "409");
  // The router adds nothing to a conflict's message: only what the handler said.
  EXPECT_EQ(
      json::parse(http(port, "POST", "/commands/edge.note_down", R"({"id":"taken","amount":1})")
                      .body)["detail"],
      "a note with this id exists already");
  // A client's own id is kept, in the problem and on success.
  auto mine = http(port, "GET", "/nothing-here", "", {{"X-Correlation-Id", "req-42"}});
  expect_problem(mine, 404, "/problems/not-found", "client id");
  EXPECT_EQ(json::parse(mine.body)["correlation_id"], "req-42");
  auto ok = http(port, "GET", "/health", "", {{"X-Correlation-Id", "req-43"}});
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(ok.headers["x-correlation-id"], "req-43");
  EXPECT_FALSE(http(port, "GET", "/index.html").headers["x-correlation-id"].empty());
  // One that is too long or holds spaces is not taken (it is logged and stored): a fresh one is.
  for (const auto& bad : {std::string(65, 'a'), std::string("two words")}) {
    auto fresh = http(port, "GET", "/health", "", {{"X-Correlation-Id", bad}});
    EXPECT_NE(fresh.headers["x-correlation-id"], bad);
    EXPECT_FALSE(fresh.headers["x-correlation-id"].empty());
  }
}

TEST_F(edge_server, head_is_answered_wherever_get_is_with_the_same_headers_and_no_body) {
  start();
  ASSERT_EQ(http(port, "POST", "/commands/edge.note_down", R"({"id":"a","amount":5})").status, 200);
  for (const auto* target : {"/health", "/", "/docs/guide.html", "/openapi.json",
                             "/queries/edge.total?id=a", "/admin/projections"}) {
    auto get = http(port, "GET", target);
    ASSERT_EQ(get.status, 200) << target << ": " << get.body;
    // Connection: close, so that any body bytes sent after the headers would show in `body`.
    auto head = http(port, "HEAD", target, "", {{"Connection", "close"}});
    EXPECT_EQ(head.status, 200) << target;
    EXPECT_EQ(head.headers["content-length"], std::to_string(get.body.size())) << target;
    EXPECT_EQ(head.headers["content-type"], get.headers["content-type"]) << target;
    EXPECT_EQ(head.body, "") << target;
  }
  // On a kept-alive connection the next answer follows the headers at once: read_reply, waiting
  // for the Content-Length bytes the HEAD answer announces, finds the next answer there instead.
  http_connection c(port);
  c.send_raw(
      "HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /queries/edge.total?id=a HTTP/1.1\r\n"
      "Host: x\r\n\r\n");
  auto head = c.read_reply();
  EXPECT_EQ(head.status, 200);
  EXPECT_THAT(head.body, testing::StartsWith("HTTP/1.1 200"));
  auto head_404 = http(port, "HEAD", "/missing.html", "", {{"Connection", "close"}});
  EXPECT_EQ(head_404.status, 404);
  EXPECT_EQ(head_404.body, "");
  auto head_command = http(port, "HEAD", "/commands/edge.note_down", "", {{"Connection", "close"}});
  EXPECT_EQ(head_command.status, 405);
}

// The first IPv4 address of this machine that is not loopback; empty when it has none.
std::string non_loopback_address() {
  ifaddrs* all = nullptr;
  if (::getifaddrs(&all) != 0) return {};
  std::string found;
  for (auto* a = all; a && found.empty(); a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    char text[INET_ADDRSTRLEN];
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    if (!cleave::http::detail::is_loopback(text)) found = text;
  }
  ::freeifaddrs(all);
  return found;
}

TEST_F(edge_server, without_tokens_the_admin_api_answers_only_loopback_clients_and_says_so) {
  cleave::app_config cfg;
  cfg.listen = "0.0.0.0:0";
  testing::internal::CaptureStderr();
  start(cfg);
  const auto log = testing::internal::GetCapturedStderr();
  EXPECT_THAT(log, HasSubstr("admin API"));
  EXPECT_THAT(log, HasSubstr("loopback"));
  EXPECT_EQ(http(port, "GET", "/admin/projections").status, 200);
  const auto address = non_loopback_address();
  if (address.empty()) GTEST_SKIP() << "this machine has no address but loopback";
  http_connection remote(port, address);
  expect_problem(remote.request("GET", "/admin/projections"), 403, "/problems/forbidden");
  http_connection remote_post(port, address);
  expect_problem(remote_post.request("POST", "/admin/projections/none/rebuild"), 403,
                 "/problems/forbidden");
  // Everything else still answers.
  http_connection health(port, address);
  EXPECT_EQ(health.request("GET", "/health").status, 200);
}

TEST(is_loopback, knows_ipv4_ipv6_and_mapped_loopback) {
  using cleave::http::detail::is_loopback;
  for (const auto* yes : {"127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"})
    EXPECT_TRUE(is_loopback(yes)) << yes;
  for (const auto* no : {"", "10.0.0.1", "192.0.2.2", "::", "::2", "::ffff:10.0.0.1", "fe80::1",
                         "localhost", "127.0.0.1.evil"})
    EXPECT_FALSE(is_loopback(no)) << no;
}

}  // namespace
