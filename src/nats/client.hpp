#pragma once
// A thin RAII layer over the NATS C client: a connection and its JetStream context. Failures
// throw error_exception (errc::unavailable) with what the client said. Internal to src/nats.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include <nats/nats.h>

#include <cleave/core/error.hpp>

namespace cleave::nats::detail {

// Throws errc::unavailable, "<what>: <the client's last error>", unless `s` is NATS_OK.
void check(natsStatus s, std::string_view what);

// The pause before try `failures + 1` after that many failures in a row: 100 ms doubling, at most
// `most`.
inline std::chrono::milliseconds backoff(int failures, std::chrono::milliseconds most) {
  return std::min(most, std::chrono::milliseconds(100LL << std::min(failures, 16)));
}

class client {
 public:
  // Connects to `url` (no automatic reconnection: a lost connection fails what is in flight,
  // and the owner connects again) with `timeout` for connecting and for JetStream requests.
  client(const std::string& url, std::chrono::milliseconds timeout);
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  natsConnection* connection() const noexcept { return nc_; }
  jsCtx* js() const noexcept { return js_; }

  // Asynchronous publishes that failed since the last take_failure(): the first one's reason.
  std::optional<std::string> take_failure();

 private:
  static void on_publish_error(jsCtx*, jsPubAckErr* pae, void* closure);
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
  std::mutex failure_mutex_;
  std::optional<std::string> failure_;
};

}  // namespace cleave::nats::detail
