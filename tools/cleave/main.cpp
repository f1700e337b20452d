// cleave: the command-line tool for a running cleave application, over its HTTP API.
//
//   cleave --url http://127.0.0.1:8080 send shop.restock '{"product_id":"mug","quantity":5}'
//   cleave send shop.restock '{"product_id":"mug","quantity":5}' --id restock-42   # retry-safe
//   cleave ask shop.product_stock '{"product_id":"mug"}' [--min-position TOKEN]
//   cleave health | metrics | openapi
//
// Results go to stdout as JSON; problems to stderr. Exit codes: 0 ok, 2 refused by the server
// (4xx), 1 the server failed or could not be reached (5xx, network).

#include <utility>  // before Asio: Boost 1.74's Asio uses std::exchange without including it

#include <cstdlib>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

namespace {

namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = boost::asio::ip::tcp;

struct target {
  std::string host, port, base;
};

// "http://host:port[/base]" -> its parts.
target parse_url(const std::string& url) {
  const std::string scheme = "http://";
  if (!url.starts_with(scheme)) throw std::runtime_error("--url must start with http://");
  const auto rest = url.substr(scheme.size());
  const auto slash = rest.find('/');
  const auto hostport = rest.substr(0, slash);
  const auto colon = hostport.rfind(':');
  target t;
  t.host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
  t.port = colon == std::string::npos ? "80" : hostport.substr(colon + 1);
  t.base = slash == std::string::npos ? "" : rest.substr(slash);
  while (!t.base.empty() && t.base.back() == '/') t.base.pop_back();
  return t;
}

int call(const target& t, bhttp::verb method, const std::string& path, const std::string& body,
         const std::string& min_position, const std::string& token,
         const std::string& idempotency_key = "") {
  boost::asio::io_context io;
  tcp::resolver resolver(io);
  beast::tcp_stream stream(io);
  stream.connect(resolver.resolve(t.host, t.port));
  bhttp::request<bhttp::string_body> req{method, t.base + path, 11};
  req.set(bhttp::field::host, t.host);
  req.set(bhttp::field::user_agent, "cleave-cli");
  if (!min_position.empty()) req.set("Cleave-Min-Position", min_position);
  if (!token.empty()) req.set(bhttp::field::authorization, "Bearer " + token);
  if (!idempotency_key.empty()) req.set("Idempotency-Key", idempotency_key);
  if (method == bhttp::verb::post) {
    req.set(bhttp::field::content_type, "application/json");
    req.body() = body;
  }
  req.prepare_payload();
  bhttp::write(stream, req);
  beast::flat_buffer buffer;
  bhttp::response<bhttp::string_body> res;
  bhttp::read(stream, buffer, res);
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  const int status = static_cast<int>(res.result_int());
  const bool is_json = res[bhttp::field::content_type].find("json") != std::string::npos;
  std::string text = res.body();
  if (is_json) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_discarded()) text = j.dump(2);
  }
  (status < 400 ? std::cout : std::cerr) << text << std::endl;
  return status < 400 ? 0 : status < 500 ? 2 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"cleave: talk to a running cleave application over HTTP"};
  const char* env_url = std::getenv("CLEAVE_URL");
  std::string url = env_url ? env_url : "http://127.0.0.1:8080";
  std::string token, min_position, name, id, body = "{}";
  cli.add_option("--url", url, "the application's base URL (or CLEAVE_URL)");
  cli.add_option("--token", token, "a bearer token");
  auto* send = cli.add_subcommand("send", "send a command: send NAME [JSON]");
  send->add_option("name", name, "the command's wire name")->required();
  send->add_option("json", body, "the command as JSON");
  send->add_option("--id", id,
                   "an idempotency key: a retry with it gets the first outcome and has no effect");
  auto* ask = cli.add_subcommand("ask", "ask a query: ask NAME [JSON]");
  ask->add_option("name", name, "the query's wire name")->required();
  ask->add_option("json", body, "the query as JSON");
  ask->add_option("--min-position", min_position, "read at least up to this position token");
  auto* health = cli.add_subcommand("health", "the application's health");
  auto* metrics = cli.add_subcommand("metrics", "its Prometheus metrics");
  auto* openapi = cli.add_subcommand("openapi", "its OpenAPI document");
  cli.require_subcommand(1);
  CLI11_PARSE(cli, argc, argv);
  try {
    const auto t = parse_url(url);
    if (*send) return call(t, bhttp::verb::post, "/commands/" + name, body, "", token, id);
    if (*ask) return call(t, bhttp::verb::post, "/queries/" + name, body, min_position, token);
    if (*health) return call(t, bhttp::verb::get, "/health", "", "", token);
    if (*metrics) return call(t, bhttp::verb::get, "/metrics", "", "", token);
    if (*openapi) return call(t, bhttp::verb::get, "/openapi.json", "", "", token);
  } catch (const std::exception& e) {
    std::cerr << "cleave: " << e.what() << std::endl;
    return 1;
  }
  return 2;
}
