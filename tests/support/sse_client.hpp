#pragma once
// A Server-Sent Events client over loopback for the live-stream tests: opens a stream, then reads
// its events one at a time with a timeout (comments such as heartbeats are counted, not
// returned).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>

namespace cleave::testing {

struct sse_event {
  std::string id, type, data;
};

class sse_stream {
 public:
  // GET `target` with `headers`; `receive_buffer` > 0 shrinks the socket's receive buffer (a
  // slow consumer).
  sse_stream(std::uint16_t port, const std::string& target,
             const std::map<std::string, std::string>& headers = {}, int receive_buffer = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (receive_buffer > 0)
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error("cannot connect");
    std::string req =
        "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n";
    for (const auto& [k, v] : headers) req += k + ": " + v + "\r\n";
    req += "\r\n";
    ::send(fd_, req.data(), req.size(), MSG_NOSIGNAL);
    std::size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos)
      if (!fill(std::chrono::seconds(10))) return;
    head_ = buffer_.substr(0, end);
    status = std::stoi(head_.substr(9, 3));
    buffer_.erase(0, end + 4);
  }
  ~sse_stream() { ::close(fd_); }
  sse_stream(const sse_stream&) = delete;
  sse_stream& operator=(const sse_stream&) = delete;

  int status = 0;
  int comments = 0;  // comment lines seen (heartbeats)

  // The response head (status line and headers) as sent.
  const std::string& head() const { return head_; }
  // For a refused stream: what came after the head (its problem+json body).
  std::string rest(std::chrono::milliseconds timeout = std::chrono::milliseconds(2000)) {
    while (fill(timeout)) {
    }
    return buffer_;
  }

  // The next event, or nothing when none came within `timeout` or the server closed.
  std::optional<sse_event> next(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto e = parse()) return e;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0 || !fill(left)) return std::nullopt;
    }
  }
  // Whether the server closed the stream within `timeout` (reading what it sends meanwhile).
  bool closed_within(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char chunk[65536];
      if (::recv(fd_, chunk, sizeof chunk, 0) <= 0) return true;
    }
    return false;
  }

 private:
  std::optional<sse_event> parse() {
    for (;;) {
      const auto end = buffer_.find("\n\n");
      if (end == std::string::npos) return std::nullopt;
      const std::string block = buffer_.substr(0, end);
      buffer_.erase(0, end + 2);
      sse_event e;
      bool any = false;
      std::size_t at = 0;
      while (at <= block.size()) {
        auto nl = block.find('\n', at);
        if (nl == std::string::npos) nl = block.size();
        const std::string line = block.substr(at, nl - at);
        at = nl + 1;
        if (line.empty()) continue;
        if (line[0] == ':') {
          ++comments;
          continue;
        }
        const auto colon = line.find(':');
        const auto field = line.substr(0, colon);
        auto value = colon == std::string::npos ? "" : line.substr(colon + 1);
        if (!value.empty() && value[0] == ' ') value.erase(0, 1);
        if (field == "id") e.id = value, any = true;
        if (field == "event") e.type = value, any = true;
        if (field == "data") e.data += value, any = true;
      }
      if (any && !e.type.empty()) return e;  // (a "retry:" block alone is no event)
    }
  }
  bool fill(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
    char chunk[8192];
    const auto n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<std::size_t>(n));
    return true;
  }
  int fd_ = -1;
  std::string head_, buffer_;
};

}  // namespace cleave::testing
