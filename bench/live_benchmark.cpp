// cleave_bench_live: events leaving the database, against what a user would write by hand, in
// one run. One JSON line per case on stdout; progress on stderr.
//
//   relay_nats   events/s the relay publishes from the log (SQLite) to a JetStream stream
//       (read, chained, deduplicated, checkpointed), against publishing the same payloads with
//       message ids straight from a loop with the NATS C client (asynchronous publishes, then one
//       wait for every acknowledgement) into another stream of the same server.
//   live_query_fanout   1,000 Server-Sent Event subscribers on one live query over loopback
//       HTTP: ms from a command's commit to every subscriber having the new result (p50, p99
//       over the rounds), beside the same with one subscriber.
//
// Starts its own nats-server (a temporary folder); SQLite files in a temporary folder.
// CLEAVE_BENCH_RELAY_EVENTS sizes the relay case (default 100,000).

#include <poll.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nats/nats.h>
#include <spdlog/spdlog.h>

#include <cleave/cleave.hpp>
#include <cleave/http/server.hpp>
#include <cleave/nats/nats.hpp>

#include "nats_server.hpp"
#include "temp_dir.hpp"

namespace {

using steady = std::chrono::steady_clock;

struct fill {
  std::int64_t from = 0;
  std::int64_t n = 0;
};
CLEAVE_COMMAND(fill, "bench.fill", from, n)
struct filled {
  std::string order;
  std::int64_t n = 0;
  std::string note;
};
CLEAVE_EVENT(filled, "bench.filled", order, n, note)

struct bump {
  std::string id;
};
CLEAVE_COMMAND(bump, "bench.bump", id)
struct bumped {
  std::string id;
};
CLEAVE_EVENT(bumped, "bench.bumped", id)
struct total {
  std::string id;
  using response = std::int64_t;
};
CLEAVE_QUERY(total, "bench.total", id)

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

std::size_t env_size(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

void relay_case(const std::string& url, const cleave::testing::temp_dir& dir) {
  const auto n = env_size("CLEAVE_BENCH_RELAY_EVENTS", 100'000);
  cleave::app_config config;
  config.database = dir.file("relay.db");
  config.run_projector = false;
  config.log_level = "warn";
  cleave::app a(config);
  a.commands().add([](const fill& c, cleave::write_context& tx) -> cleave::result<void> {
    for (std::int64_t i = 0; i < c.n; ++i)
      tx.emit(fmt::format("order-{}", (c.from + i) % 1000),
              filled{fmt::format("order-{}", (c.from + i) % 1000), c.from + i, "a line or two"});
    return {};
  });
  cleave::nats::relay_options out;
  out.url = url;
  out.stream = "BENCH_RELAY";
  out.prefix = "relay";
  cleave::nats::add_relay(a, out);
  a.migrate();
  for (std::size_t from = 0; from < n; from += 1000)
    if (!a.commands().send(fill{static_cast<std::int64_t>(from), 1000}))
      throw std::runtime_error("filling the log failed");
  const auto events = a.store().read_events({}, n);

  // Baseline: the same payloads, with message ids, published straight from a loop.
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  natsConnection_ConnectTo(&nc, url.c_str());
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.MaxPending = 8192;
  natsConnection_JetStream(&js, nc, &jo);
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  const char* subjects[] = {"direct.>"};
  cfg.Name = "BENCH_DIRECT";
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  jsStreamInfo* si = nullptr;
  js_AddStream(&si, js, &cfg, nullptr, nullptr);
  jsStreamInfo_Destroy(si);
  auto start = steady::now();
  for (const auto& e : events) {
    const auto payload = e.payload.dump();
    const auto id = cleave::nats::message_id(e);
    const auto subject = "direct." + e.type;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = id.c_str();
    js_PublishAsync(js, subject.c_str(), payload.data(), static_cast<int>(payload.size()), &po);
  }
  jsPubOptions wait;
  jsPubOptions_Init(&wait);
  wait.MaxWait = 60000;
  if (js_PublishAsyncComplete(js, &wait) != NATS_OK)
    throw std::runtime_error("the direct publishes were not all acknowledged");
  const double direct = static_cast<double>(events.size()) /
                        std::chrono::duration<double>(steady::now() - start).count();
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);

  start = steady::now();
  a.projections().catch_up();
  const double relayed = static_cast<double>(events.size()) /
                         std::chrono::duration<double>(steady::now() - start).count();
  if (a.projections().status("nats_relay").lag_events != 0)
    throw std::runtime_error("the relay did not catch up");
  fmt::print(
      R"({{"bench":"live","case":"relay_nats","unit":"events/s","value":{:.0f},"baseline":{:.0f},"ratio":{:.3f},"events":{},"target_ratio":0.5,"baseline_is":"the same payloads with message ids published asynchronously from a loop with the NATS C client, one wait for all acknowledgements"}})"
      "\n",
      relayed, direct, relayed / direct, events.size());
  std::fflush(stdout);
}

// Subscribers of one live query, read on this thread with poll().
class subscribers {
 public:
  subscribers(std::uint16_t port, std::size_t n) {
    const std::string request =
        "GET /queries/bench.total/live?id=x HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: "
        "text/event-stream\r\n\r\n";
    for (std::size_t i = 0; i < n; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(port);
      ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        throw std::runtime_error("cannot connect a subscriber");
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
      fds_.push_back({fd, POLLIN, 0});
      seen_.push_back(-1);
      buffers_.emplace_back();
    }
  }
  ~subscribers() {
    for (const auto& p : fds_) ::close(p.fd);
  }
  subscribers(const subscribers&) = delete;
  subscribers& operator=(const subscribers&) = delete;

  // Reads until every subscriber has seen result `value`; the time the last one did.
  steady::time_point wait_for(std::int64_t value, steady::time_point deadline) {
    std::size_t behind = 0;
    for (const auto s : seen_) behind += s < value;
    auto last = steady::now();
    char chunk[16384];
    while (behind > 0) {
      if (steady::now() > deadline) throw std::runtime_error("subscribers fell behind");
      if (::poll(fds_.data(), fds_.size(), 100) <= 0) continue;
      const auto now = steady::now();
      for (std::size_t i = 0; i < fds_.size(); ++i) {
        if (!(fds_[i].revents & POLLIN)) continue;
        const auto got = ::recv(fds_[i].fd, chunk, sizeof chunk, 0);
        if (got <= 0) throw std::runtime_error("a subscriber was closed");
        auto& b = buffers_[i];
        b.append(chunk, static_cast<std::size_t>(got));
        std::size_t at;
        while ((at = b.find("\"result\":")) != std::string::npos) {
          const auto end = b.find_first_of(",}", at);
          if (end == std::string::npos) break;
          const std::int64_t v = std::stoll(b.substr(at + 9, end - at - 9));
          b.erase(0, end);
          if (seen_[i] < value && v >= value) {
            --behind;
            last = now;
          }
          seen_[i] = std::max(seen_[i], v);
        }
      }
    }
    return last;
  }

 private:
  std::vector<pollfd> fds_;
  std::vector<std::int64_t> seen_;
  std::vector<std::string> buffers_;
};

// Rounds of one bump each: ms from its commit to every subscriber having the new total.
std::vector<double> fanout(cleave::app& a, std::uint16_t port, std::size_t n, int rounds,
                           std::int64_t& value) {
  subscribers s(port, n);
  s.wait_for(value, steady::now() + std::chrono::seconds(30));
  std::vector<double> ms;
  for (int r = 0; r < rounds; ++r) {
    if (!a.commands().send(bump{"x"})) throw std::runtime_error("a bump failed");
    const auto committed = steady::now();
    ++value;
    const auto all = s.wait_for(value, committed + std::chrono::seconds(30));
    ms.push_back(std::chrono::duration<double, std::milli>(all - committed).count());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return ms;
}

void fanout_case(const cleave::testing::temp_dir& dir) {
  cleave::app_config config;
  config.database = dir.file("live.db");
  config.listen = "127.0.0.1:0";
  config.log_level = "warn";
  config.max_connections = 4096;
  config.max_live_streams = 4096;
  cleave::app a(config);
  a.commands().add([](const bump& c, cleave::write_context& tx) -> cleave::result<void> {
    tx.emit(c.id, bumped{c.id});
    return {};
  });
  cleave::projection totals{"totals"};
  totals.schema("create table {view}(id text primary key, n bigint not null)")
      .on([](const bumped& e, cleave::view_context& v) {
        v.exec(
            "insert into {view}(id, n) values ($1, 1) on conflict(id) do update set n = {view}.n "
            "+ 1",
            e.id);
      });
  a.add_projection(std::move(totals));
  a.queries().add(
      [](const total& q, const cleave::read_context& db) -> cleave::result<std::int64_t> {
        return db.one<std::int64_t>("select n from totals where id = $1", q.id).value_or(0);
      });
  a.reads("bench.total", {"totals"});
  a.migrate();
  a.start_workers();
  cleave::http::server server(a);
  server.start();
  std::int64_t value = 0;
  const auto one = fanout(a, server.port(), 1, 50, value);
  const auto many = fanout(a, server.port(), 1000, 50, value);
  server.stop();
  a.stop_workers();
  fmt::print(
      R"({{"bench":"live","case":"live_query_fanout","unit":"ms","subscribers":1000,"rounds":{},"p50_ms":{:.2f},"p99_ms":{:.2f},"max_ms":{:.2f},"one_subscriber_p50_ms":{:.2f},"one_subscriber_p99_ms":{:.2f},"ratio_p50_to_one_subscriber":{:.2f},"target_p99_ms":100,"measured_is":"from a command's commit to the last of 1,000 SSE subscribers reading the new result over loopback HTTP"}})"
      "\n",
      many.size(), percentile(many, 0.5), percentile(many, 0.99), percentile(many, 1.0),
      percentile(one, 0.5), percentile(one, 0.99), percentile(many, 0.5) / percentile(one, 0.5));
  std::fflush(stdout);
}

}  // namespace

int main() {
  // 1,000 subscribers and their server side need more descriptors than some defaults give.
  rlimit files{};
  getrlimit(RLIMIT_NOFILE, &files);
  files.rlim_cur = files.rlim_max;
  setrlimit(RLIMIT_NOFILE, &files);
  spdlog::set_level(spdlog::level::warn);
  try {
    cleave::testing::temp_dir dir;
    {
      cleave::testing::nats_server nats;
      fmt::print(stderr, "live: relay to NATS JetStream\n");
      relay_case(nats.url(), dir);
    }
    fmt::print(stderr, "live: live query fan-out to 1,000 subscribers\n");
    fanout_case(dir);
  } catch (const std::exception& e) {
    fmt::print(stderr, "cleave_bench_live: {}\n", e.what());
    return 1;
  }
  return 0;
}
