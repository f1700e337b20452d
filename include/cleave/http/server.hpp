#pragma once
// The HTTP/JSON transport over an app (Boost.Beast, C++20 coroutines).
//
//   POST /commands/{name}       JSON body  -> 200 {"result": …, "position": "<token>"}
//                                             and the header Cleave-Position: <token>
//   POST /queries/{name}        JSON body  -> 200 {"result": …, "position": …}
//   GET  /queries/{name}?f=v    (queries whose fields are all scalars)
//   GET  /openapi.json, /health, /metrics (Prometheus text), and static files at / when
//   app_config::static_dir is set.
// Errors are RFC 9457 application/problem+json; see problem_type() for the table.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <cleave/app/app.hpp>

namespace cleave::http {

// The `type` URI of the problem a status and category produce ("/problems/validation", ...).
std::string_view problem_type(int status, errc category);

class server {
 public:
  // Serves `a` (not owned; it must outlive the server) as its configuration says.
  explicit server(app& a);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // Binds app_config::listen ("host:port"; port 0 picks a free one) and starts the I/O threads
  // and the workers. Throws error_exception (unavailable) when it cannot bind.
  void start();
  // The port it listens on (after start()).
  std::uint16_t port() const;
  // Stops accepting, lets in-flight requests finish and their responses go out, then closes
  // every connection. Idempotent.
  void stop();
  // Blocks until SIGINT or SIGTERM, then stop()s.
  void run_until_signal();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Adds the `serve` verb to the app: serve HTTP until SIGINT/SIGTERM.
void install(app& a);

}  // namespace cleave::http
