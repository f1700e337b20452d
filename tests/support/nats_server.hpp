#pragma once
// A throwaway NATS server with JetStream for one test: started on a free loopback port with a
// store folder of its own, stopped (or killed, or restarted on the same port and store) by the
// test.

#include <chrono>
#include <csignal>
#include <stdexcept>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "temp_dir.hpp"

namespace cleave::testing {

class nats_server {
 public:
  nats_server() : port_(free_port()) { start(); }
  ~nats_server() { stop(SIGKILL); }
  nats_server(const nats_server&) = delete;
  nats_server& operator=(const nats_server&) = delete;

  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

  // Starts it (again) and waits until it accepts connections.
  void start() {
    if (pid_ > 0) return;
    const std::string port = std::to_string(port_), store = dir_.file("js");
    pid_ = fork();
    if (pid_ == 0) {
      execlp("nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", port.c_str(), "-sd",
             store.c_str(), "-l", dir_.file("server.log").c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!accepting()) {
      if (std::chrono::steady_clock::now() > until)
        throw std::runtime_error("nats-server did not start (is it installed?)");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  // Stops it with `sig` (SIGTERM: a clean shutdown) and waits for it.
  void stop(int sig = SIGTERM) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  static int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      close(fd);
      throw std::runtime_error("no free port");
    }
    close(fd);
    return ntohs(a.sin_port);
  }
  bool accepting() const {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port_));
    const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(fd);
    return ok;
  }

  temp_dir dir_;
  int port_;
  pid_t pid_ = -1;
};

}  // namespace cleave::testing
