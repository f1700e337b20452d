#pragma once
// A raw HTTP/1.1 client over loopback, for tests that must also send what a good client would
// not (oversized headers, half-sent requests, lying Content-Length).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>

namespace cleave::testing {

struct http_reply {
  int status = 0;
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
};

class http_connection {
 public:
  // Connects to `port` on `address` (an IPv4 address; loopback by default).
  explicit http_connection(std::uint16_t port, const std::string& address = "127.0.0.1") {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (::inet_pton(AF_INET, address.c_str(), &addr.sin_addr) != 1)
      throw std::runtime_error("not an IPv4 address: " + address);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error("cannot connect");
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~http_connection() { ::close(fd_); }
  http_connection(const http_connection&) = delete;
  http_connection& operator=(const http_connection&) = delete;

  void send_raw(const std::string& bytes) {
    std::size_t sent = 0;
    while (sent < bytes.size()) {
      auto n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;  // the server may close early (413, 431): what it said is still readable
      sent += static_cast<std::size_t>(n);
    }
  }

  // Reads one response (Content-Length framed). status 0 when the connection closed first.
  http_reply read_reply() {
    http_reply r;
    std::size_t header_end;
    while ((header_end = buffer_.find("\r\n\r\n")) == std::string::npos)
      if (!fill()) return r;
    const std::string head = buffer_.substr(0, header_end);
    r.status = std::stoi(head.substr(9, 3));
    std::size_t line = head.find("\r\n");
    while (line != std::string::npos && line < head.size()) {
      const auto next = head.find("\r\n", line + 2);
      const auto text =
          head.substr(line + 2, (next == std::string::npos ? head.size() : next) - line - 2);
      const auto colon = text.find(':');
      if (colon != std::string::npos) {
        std::string name = text.substr(0, colon);
        for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        r.headers[name] = text.substr(text.find_first_not_of(' ', colon + 1));
      }
      line = next;
    }
    const std::size_t length =
        r.headers.contains("content-length") ? std::stoul(r.headers["content-length"]) : 0;
    while (buffer_.size() < header_end + 4 + length)
      if (!fill()) break;
    r.body = buffer_.substr(header_end + 4, length);
    buffer_.erase(0, header_end + 4 + length);
    return r;
  }

  http_reply request(const std::string& method, const std::string& target,
                     const std::string& body = "",
                     const std::map<std::string, std::string>& headers = {
                         {"Content-Type", "application/json"}}) {
    std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    for (const auto& [k, v] : headers) req += k + ": " + v + "\r\n";
    if (!body.empty() || method == "POST")
      req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    req += "\r\n" + body;
    send_raw(req);
    return read_reply();
  }

  // True when the server has closed the connection.
  bool closed() {
    char c;
    auto n = ::recv(fd_, &c, 1, MSG_PEEK);
    return n == 0;
  }

 private:
  bool fill() {
    char chunk[8192];
    auto n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<std::size_t>(n));
    return true;
  }
  int fd_ = -1;
  std::string buffer_;
};

// One request on a connection of its own.
inline http_reply http(std::uint16_t port, const std::string& method, const std::string& target,
                       const std::string& body = "",
                       const std::map<std::string, std::string>& headers = {
                           {"Content-Type", "application/json"}}) {
  http_connection c(port);
  return c.request(method, target, body, headers);
}

}  // namespace cleave::testing
