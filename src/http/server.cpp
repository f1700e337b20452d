// The HTTP server (see server.hpp): sockets, limits and refusals before a request is read whole,
// parked reads, workers for database work, and the `serve` verb. What a request gets is the
// router's (router.hpp).

#include <cleave/http/server.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <csignal>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cleave/core/detail/fibers.hpp>

#include "../app/verbs.hpp"
#include "answer_cache.hpp"
#include "asio.hpp"
#include "live.hpp"
#include "router.hpp"

namespace cleave::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using net::awaitable;
using net::use_awaitable;

// Wakes parked reads from the projector's thread: posts to their I/O thread, which cancels the
// timer a read waits on — once the server has stopped, nothing. One for each I/O thread.
struct park_relay : std::enable_shared_from_this<park_relay> {
  explicit park_relay(net::io_context& context) : io(context) {}
  std::mutex mutex;
  bool open = true;  // under mutex
  net::io_context& io;
  std::unordered_map<std::uint64_t, net::steady_timer*> timers;  // its I/O thread's alone
  std::uint64_t next_id = 0;                                     // its I/O thread's alone

  static void wake(const std::shared_ptr<park_relay>& relay, std::uint64_t id) {
    std::lock_guard lock(relay->mutex);
    if (!relay->open) return;
    net::post(relay->io, [relay, id] {
      if (auto it = relay->timers.find(id); it != relay->timers.end()) it->second->cancel();
    });
  }
  void close() {
    std::lock_guard lock(mutex);
    open = false;
  }
};

namespace {
// The workers' threads. Under group commit commands run as fibers (io_lane::fibers); where fibers
// cannot run, a command's thread waits for its group to commit: then there are as many as the
// groups hold, so that groups fill as they do in the process — up to 64 (PostgreSQL's lanes hold
// 32 each, and share the pool's connections with queries).
std::size_t worker_threads(app& a) {
  constexpr std::size_t most_for_groups = 64;
  const auto* grouped = a.group_commits();
  const auto workers = a.config().workers;
  return grouped && !cleave::detail::fiber_pool::available()
             ? std::max(workers, std::min(grouped->capacity(), most_for_groups))
             : workers;
}

// The I/O threads: as configured, else one a CPU this process may use (at most 8). Each runs its
// own connections, from accept (on a thread of its own) to close.
std::size_t io_threads(const app_config& c) {
  return c.io_threads ? c.io_threads : std::clamp<std::size_t>(detail::usable_cpus(), 1, 8);
}

// An I/O thread: its own event loop (so a connection's coroutine never needs a strand) and the
// reads parked on it.
struct io_lane {
  net::io_context io{1};
  // Keeps run() going while the lane has no connection.
  net::executor_work_guard<net::io_context::executor_type> busy = net::make_work_guard(io);
  std::shared_ptr<park_relay> parked = std::make_shared<park_relay>(io);
  detail::answer_cache answers;  // its connections' cached answers
  // Under group commit, commands run here as fibers: one waiting for its group holds no thread,
  // and the I/O thread goes on with other connections meanwhile (null where fibers cannot run).
  std::unique_ptr<cleave::detail::fiber_pool> fibers;
  std::thread thread;

  explicit io_lane(bool command_fibers) {
    if (!command_fibers || !cleave::detail::fiber_pool::available()) return;
    fibers = std::make_unique<cleave::detail::fiber_pool>([this](std::chrono::microseconds delay) {
      if (delay.count() == 0) {
        net::post(io, [this] { fibers->check(); });
        return;
      }
      auto timer = std::make_shared<net::steady_timer>(io, delay);
      timer->async_wait([this, timer](const beast::error_code&) { fibers->check(); });
    });
  }
};

// The queries whose answers the server may cache (`cache_answers`). Refuses (std::logic_error)
// one that reads a view outside the log's database — a memory view, another store's table —
// whose changes no commit there would mark.
std::set<std::string, std::less<>> cacheable_queries(app& a) {
  std::set<std::string, std::less<>> names;
  for (const auto* ops : a.queries().handled_ops()) {
    if (!ops->cache_answers) continue;
    const std::string name(ops->info->wire_name);
    for (const auto& view : a.read_consistency().reads_of(name))
      if (!a.projections().views_in_log_database(view))
        throw std::logic_error(fmt::format(
            "query '{}' caches its answers (cache_answers) but reads '{}', whose view is not in "
            "the event log's database: no commit there marks its changes; drop cache_answers",
            name, view));
    names.insert(name);
  }
  return names;
}

// A request the answer cache may serve: a GET of a query, on a kept-alive HTTP/1.1 connection,
// without consistency or timeout headers (whose mistakes a read would refuse) or a client's wish
// to skip caches (`Cache-Control: no-cache`, `no-store`, `max-age=0`, `Pragma: no-cache`, in any
// case and any of their fields).
bool plain_query_get(const bhttp::request<bhttp::string_body>& h) {
  constexpr std::string_view prefix = "/queries/";
  const auto target = std::string_view(h.target());
  if (h.method() != bhttp::verb::get || h.version() != 11 || !h.keep_alive() ||
      !target.starts_with(prefix) ||
      target.substr(prefix.size(), target.find('?') - prefix.size()).find('/') !=
          std::string_view::npos)  // a live stream
    return false;
  if (h.count("Cleave-Consistency") || h.count("Cleave-Min-Position") || h.count("Cleave-Timeout"))
    return false;
  for (const auto field : {bhttp::field::cache_control, bhttp::field::pragma}) {
    for (auto [it, end] = h.equal_range(field); it != end; ++it) {
      std::string v(it->value());
      std::transform(v.begin(), v.end(), v.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      v.erase(std::remove(v.begin(), v.end(), ' '), v.end());
      if (v.find("no-cache") != v.npos || v.find("no-store") != v.npos ||
          v.find("max-age=0") != v.npos)
        return false;
    }
  }
  return true;
}

// The query a `/queries/{name}?…` target names.
std::string_view query_of(std::string_view target) {
  target = target.substr(0, target.find('?'));
  return target.substr(std::string_view("/queries/").size());
}
}  // namespace

struct server::impl {
  explicit impl(app& a)
      : app_(a),
        router_(a),
        hub_(a, router_),
        workers_(worker_threads(a)),
        inline_reads_(a.config().inline_queries && a.store().local_reads()),
        cacheable_(cacheable_queries(a)) {
    for (std::size_t i = 0; i < io_threads(a.config()); ++i)
      lanes_.push_back(std::make_unique<io_lane>(a.group_commits() != nullptr));
  }

  app& app_;
  detail::router router_;
  // (Before the lanes: a stream's coroutine left at stop() is destroyed with its lane, and
  // gives its place back to the hub then.)
  detail::live_hub hub_;
  std::vector<std::unique_ptr<io_lane>> lanes_;
  // Accepting runs apart, so that a lane busy with a long query never holds up new connections.
  net::io_context accept_io_{1};
  std::thread accept_thread_;
  std::size_t next_lane_ = 0;  // the accepting thread's
  net::thread_pool workers_;
  // Queries that need not wait for views run on their I/O thread, with no hand-off, when the
  // store reads a local file (SQLite): such a read waits for no network and no writer. On
  // PostgreSQL they go to the workers, as do strong and bounded reads everywhere.
  const bool inline_reads_;
  // Queries that cache their answers; each I/O thread keeps its own (io_lane::answers).
  const std::set<std::string, std::less<>> cacheable_;
  // Health, metrics, static files and the OpenAPI document: never queued behind the workers.
  net::thread_pool light_{2};
  std::optional<tcp::acceptor> acceptor_;
  std::atomic<std::size_t> connections_{0};
  std::atomic<bool> stopping_{false};
  std::mutex inflight_mutex_;
  std::condition_variable inflight_cv_;
  std::size_t inflight_ = 0;
  std::uint16_t port_ = 0;
  bool started_ = false, stopped_ = false;

  // What of a request's Authorization the answer cache keys on: all of it when tokens are set
  // (the principal comes from it), none without (every caller is the same anonymous one).
  std::string_view token_key(const bhttp::request<bhttp::string_body>& h) const {
    return app_.config().tokens.empty() ? std::string_view{}
                                        : std::string_view(h[bhttp::field::authorization]);
  }

  // Runs `f` on the workers (a handler that may wait never runs on an I/O thread).
  template <class F>
  auto on_workers(F f) -> awaitable<decltype(f())> {
    co_return co_await net::co_spawn(
        workers_.get_executor(), [&]() -> awaitable<decltype(f())> { co_return f(); },
        use_awaitable);
  }

  // Runs `f` as a fiber of this I/O thread (see io_lane::fibers), and goes on when it has ended.
  template <class F>
  awaitable<detail::response> on_fiber(io_lane& lane, F f) {
    auto io = co_await net::this_coro::executor;
    co_return co_await net::async_initiate<decltype(use_awaitable), void(detail::response)>(
        [this, &lane, io, &f](auto handler) {
          lane.fibers->start([this, &f, io, handler = std::move(handler)]() mutable {
            detail::response res;
            try {
              res = f();
            } catch (...) {  // (the router answers every request; this is a last resort)
              res = router_.refuse(500, errc::internal, "the command could not be run");
            }
            net::post(io, [handler = std::move(handler), res = std::move(res)]() mutable {
              std::move(handler)(std::move(res));
            });
          });
        },
        use_awaitable);
  }

  // Writes `text` to a live stream; false when the client is gone or has not taken it within
  // ten seconds (a slow consumer is dropped, not buffered for).
  static awaitable<bool> send(beast::tcp_stream& stream, const std::string& text) {
    beast::error_code ec;
    stream.expires_after(std::chrono::seconds(10));
    co_await net::async_write(stream, net::buffer(text), net::redirect_error(use_awaitable, ec));
    stream.expires_never();
    co_return !ec;
  }

  static std::string stream_head(const std::string& correlation_id) {
    return fmt::format(
        "HTTP/1.1 200 OK\r\nServer: cleave\r\nContent-Type: text/event-stream\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n"
        "X-Correlation-Id: {}\r\n\r\nretry: 1000\n\n",
        correlation_id);
  }

  // Sleeps until the subscriber is woken or a heartbeat is due; false when the server stops or
  // the heartbeat cannot be written.
  awaitable<bool> idle(beast::tcp_stream& stream, detail::live_subscriber& sub,
                       net::steady_timer& timer) {
    if (sub.gone) co_return false;
    if (sub.poked.exchange(false)) co_return !stopping_;
    timer.expires_after(app_.config().live_heartbeat);
    beast::error_code ec;
    co_await timer.async_wait(net::redirect_error(use_awaitable, ec));
    if (stopping_ || sub.gone) co_return false;
    if (!ec) co_return co_await send(stream, ": heartbeat\n\n");
    sub.poked = false;
    co_return true;
  }

  // A live stream (GET /queries/{name}/live, GET /events) until the client goes, the server
  // stops, or a write stalls.
  awaitable<void> live(beast::tcp_stream& stream, detail::request r, unsigned version,
                       detail::live_route kind) {
    if (r.correlation_id.empty()) r.correlation_id = detail::new_correlation_id();
    if (!hub_.reserve()) {
      co_await refuse(stream, version, 503, "too many live streams are open; try again later",
                      r.correlation_id);
      co_return;
    }
    auto sub = std::make_shared<detail::live_subscriber>();
    const auto io = co_await net::this_coro::executor;  // this connection's I/O thread
    auto timer = std::make_shared<net::steady_timer>(io);
    sub->wake = [io, t = std::weak_ptr<net::steady_timer>(timer)] {
      net::post(io, [t] {
        if (auto p = t.lock()) p->cancel();
      });
    };
    // A stream's client sends nothing after its request: a read that completes means it has
    // gone (or broke the protocol), noticed at once rather than at the next write.
    auto probe = std::make_shared<char>();
    stream.socket().async_read_some(net::buffer(probe.get(), 1),
                                    [sub, probe](beast::error_code, std::size_t) {
                                      sub->gone = true;
                                      sub->poke();
                                    });
    // Its place and its subscription are given back on every path, an exception's included.
    struct leaving {
      detail::live_hub& hub;
      std::shared_ptr<detail::live_subscriber> sub;
      beast::tcp_stream& stream;
      ~leaving() {
        beast::error_code ignored;
        stream.socket().cancel(ignored);
        hub.forget(sub);
        hub.release();
      }
    } guard{hub_, sub, stream};
    try {
      if (kind == detail::live_route::query)
        co_await live_query(stream, r, version, sub, *timer);
      else
        co_await live_log(stream, r, version, sub, *timer);
    } catch (const std::exception& e) {
      spdlog::warn("live stream {} ended: {}", r.target, e.what());
    }
  }

  awaitable<void> live_query(beast::tcp_stream& stream, const detail::request& r, unsigned version,
                             const std::shared_ptr<detail::live_subscriber>& sub,
                             net::steady_timer& timer) {
    const auto query = detail::router::without_live(r);
    const auto path = query.target.substr(0, query.target.find('?'));
    const auto name = path.substr(std::string_view("/queries/").size());
    // Where its views are, read before the answer: a batch that commits meanwhile is seen by
    // the hub's next look, never taken as answered.
    std::string position;
    const auto first = co_await on_workers([&] {
      try {
        position = app_.read_consistency().position_of(name).to_string();
      } catch (const std::exception&) {
      }
      return router_.handle(query);
    });
    if (first.status != 200) {
      co_await write_and_close(stream, first, version);
      co_return;
    }
    hub_.watch_query(query, name, position, first.body, sub);
    if (!co_await send(stream, stream_head(r.correlation_id))) co_return;
    // A stream resumed at the answer it had already got sends nothing until the answer changes.
    const auto result = detail::result_of(first.body);
    if (!detail::names_result(r.last_event_id, result) &&
        !co_await send(stream, detail::sse_event(detail::live_event_id(position, result), "result",
                                                 first.body)))
      co_return;
    for (;;) {
      if (auto event = sub->take()) {
        if (!co_await send(stream, *event)) co_return;
        continue;
      }
      if (!co_await idle(stream, *sub, timer)) co_return;
    }
  }

  awaitable<void> live_log(beast::tcp_stream& stream, const detail::request& r, unsigned version,
                           const std::shared_ptr<detail::live_subscriber>& sub,
                           net::steady_timer& timer) {
    auto opened = co_await on_workers([&] { return router_.open_feed(r); });
    if (auto* refused = std::get_if<detail::response>(&opened)) {
      co_await write_and_close(stream, *refused, version);
      co_return;
    }
    auto& feed = std::get<detail::event_feed>(opened);
    hub_.watch_log(sub);
    if (!co_await send(stream, stream_head(r.correlation_id))) co_return;
    constexpr std::size_t batch = 500;
    std::vector<stored_event> events;
    for (;;) {
      std::string text;
      bool read = true;
      const auto through = co_await on_workers([&] {
        try {
          return app_.store().read_events_into(feed.after, batch, events, feed.types);
        } catch (const std::exception& e) {
          spdlog::warn("event feed: {}", e.what());
          read = false;
          return feed.after;
        }
      });
      if (!read) co_return;
      // At most ~256 KB a write: a slow reader gets small writes, each with its own 10 s.
      std::size_t taken = 0;
      for (auto& e : events) {
        if (text.size() > std::size_t{256} * 1024) break;
        ++taken;
        app_.upcasters().apply(e.type, e.payload);
        text += detail::sse_event(e.position.to_string(), e.type,
                                  json{{"position", e.position.to_string()},
                                       {"stream", e.stream},
                                       {"stream_version", e.stream_version},
                                       {"type", e.type},
                                       {"payload", e.payload.value()},
                                       {"recorded_at_ms", e.recorded_at_ms},
                                       {"correlation_id", e.correlation_id}}
                                      .dump());
      }
      const bool whole = taken == events.size();
      feed.after = whole ? through : events[taken - 1].position;
      if (!text.empty() && !co_await send(stream, text)) co_return;
      if (!whole || events.size() == batch) continue;  // more to come at once
      if (!co_await idle(stream, *sub, timer)) co_return;
    }
  }

  // A query that must wait for views waits here, parked on the I/O thread, until they are
  // there or its deadline passes: a worker would be held for the whole wait. Sets the
  // request's deadline; returns the refusal when too many reads are parked.
  awaitable<std::optional<detail::response>> park(detail::request& r, park_relay& parked) {
    auto read = router_.vet(r);
    if (!read) co_return std::nullopt;
    net::steady_timer timer(parked.io);
    const auto id = parked.next_id++;
    parked.timers.emplace(id, &timer);
    // (Called on another thread; what it posts runs after this coroutine suspends below.)
    auto ticket = app_.read_consistency().park(
        read->name, read->wanted,
        [relay = parked.shared_from_this(), id] { park_relay::wake(relay, id); },
        app_.config().max_parked_reads);
    using outcome = read_your_writes::parking::outcome;
    if (ticket.state == outcome::parked) {
      r.deadline = ticket.deadline;
      // The projector calls back at the deadline too; the timer is the backstop.
      timer.expires_at(ticket.deadline + std::chrono::milliseconds(100));
      beast::error_code ec;
      co_await timer.async_wait(net::redirect_error(use_awaitable, ec));
    }
    parked.timers.erase(id);
    if (ticket.state == outcome::full)
      co_return router_.refuse(503, errc::unavailable,
                               "too many reads are waiting for views; try again");
    co_return std::nullopt;
  }

  void begin_request() {
    std::lock_guard lock(inflight_mutex_);
    ++inflight_;
  }
  void end_request() {
    {
      std::lock_guard lock(inflight_mutex_);
      --inflight_;
    }
    inflight_cv_.notify_all();
  }

  static bhttp::response<bhttp::string_body> to_beast(const detail::response& r, unsigned version,
                                                      bool keep_alive) {
    bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(r.status), version};
    res.set(bhttp::field::server, "cleave");
    res.set(bhttp::field::content_type, r.content_type);
    for (const auto& [name, value] : r.headers) res.set(name, value);
    res.keep_alive(keep_alive);
    res.body() = r.body;
    res.prepare_payload();
    return res;
  }

  // True when the client went away or went quiet: nobody is left to answer.
  static bool gone(const beast::error_code& ec) {
    return ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message ||
           ec == net::error::eof || ec == beast::error::timeout ||
           ec == net::error::operation_aborted || ec == net::error::connection_reset ||
           ec == net::error::broken_pipe;
  }

  awaitable<void> write_and_close(beast::tcp_stream& stream, const detail::response& r,
                                  unsigned version) {
    auto res = to_beast(r, version, false);
    beast::error_code ec;
    co_await bhttp::async_write(stream, res, net::redirect_error(use_awaitable, ec));
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  // Answers a request refused before it was read whole, or a connection turned away, with a
  // problem (the server's fault when it is a 503, else the client's), and closes.
  awaitable<void> refuse(beast::tcp_stream& stream, unsigned version, int status,
                         std::string detail, std::string correlation_id = {}) {
    const auto category = status == 503 ? errc::unavailable : errc::validation;
    co_await write_and_close(
        stream, router_.refuse(status, category, std::move(detail), std::move(correlation_id)),
        version);
  }

  awaitable<void> session(tcp::socket socket, io_lane& lane) {
    beast::error_code peer_ec;
    const auto peer = socket.remote_endpoint(peer_ec);
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    const auto& cfg = app_.config();
    for (;;) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(cfg.max_header_bytes));
      parser.body_limit(cfg.max_body_bytes);
      stream.expires_after(cfg.idle_timeout);
      beast::error_code ec;
      co_await bhttp::async_read_header(stream, buffer, parser,
                                        net::redirect_error(use_awaitable, ec));
      if (ec == bhttp::error::body_limit) {
        // Beast checks Content-Length against the limit as soon as the headers are in: refused
        // before a byte of the body is read.
        co_await refuse(stream, parser.get().version(), 413,
                        fmt::format("the body is over the limit of {} bytes", cfg.max_body_bytes));
        break;
      }
      if (ec == bhttp::error::header_limit) {
        co_await refuse(stream, 11, 431, "the request headers are too large");
        break;
      }
      if (gone(ec)) break;
      if (ec) {
        co_await refuse(stream, 11, 400, "a malformed HTTP request");
        break;
      }
      const auto& header = parser.get();
      const unsigned version = header.version();
      const std::string correlation_id =
          detail::accepted_correlation_id(std::string_view(header["X-Correlation-Id"]));
      if (auto length = parser.content_length(); length && *length > cfg.max_body_bytes) {
        // Refused from Content-Length, before a byte of the body is read.
        co_await refuse(
            stream, version, 413,
            fmt::format("the body is {} bytes; the limit is {}", *length, cfg.max_body_bytes),
            correlation_id);
        break;
      }
      begin_request();
      co_await bhttp::async_read(stream, buffer, parser, net::redirect_error(use_awaitable, ec));
      if (ec) {
        end_request();
        if (ec == bhttp::error::body_limit)
          co_await refuse(stream, version, 413, "the body is over the limit", correlation_id);
        else if (!gone(ec))  // a malformed body, chunked framing included
          co_await refuse(stream, version, 400, "a malformed request body", correlation_id);
        break;
      }
      // A cached answer, when the data it was read from is still the store's; else, when the
      // query caches its answers, the data version to keep this answer under.
      std::optional<data_version> read_at;
      if (!cacheable_.empty() && plain_query_get(parser.get()) && !stopping_.load()) {
        const auto start = clock::now();
        const auto& h = parser.get();
        const auto target = std::string_view(h.target());
        const auto now = app_.store().current_data_version();
        if (now) {
          if (auto kept = lane.answers.find(target, token_key(h), *now)) {
            const std::string id =
                correlation_id.empty() ? detail::new_correlation_id() : correlation_id;
            router_.stats().record_cached_answer(kept->query, clock::now() - start);
            const std::array buffers{net::buffer(kept->head), net::buffer(id),
                                     net::buffer(kept->tail)};
            co_await net::async_write(stream, buffers, net::redirect_error(use_awaitable, ec));
            end_request();
            if (ec) break;
            continue;
          }
          if (cacheable_.contains(query_of(target))) read_at = now;
        }
      }
      auto req = parser.release();
      detail::request r;
      r.method = std::string(req.method_string());
      r.target = std::string(req.target());
      r.content_type = std::string(req[bhttp::field::content_type]);
      r.authorization = std::string(req[bhttp::field::authorization]);
      r.correlation_id = correlation_id;
      if (!peer_ec) r.peer = peer.address().to_string();
      r.min_position = std::string(req["Cleave-Min-Position"]);
      r.consistency = std::string(req["Cleave-Consistency"]);
      r.timeout = std::string(req["Cleave-Timeout"]);
      r.received = clock::now();
      for (auto [it, end] = req.equal_range("Idempotency-Key"); it != end; ++it)
        r.idempotency_key = r.idempotency_key ? *r.idempotency_key + ", " + std::string(it->value())
                                              : std::string(it->value());
      r.last_event_id = std::string(req["Last-Event-ID"]);
      r.body = std::move(req.body());
      if (const auto kind = detail::router::live(r); kind != detail::live_route::none) {
        end_request();  // a stream does not hold up stop()
        co_await live(stream, std::move(r), version, kind);
        break;
      }
      std::optional<detail::response> refused = co_await park(r, *lane.parked);
      detail::response res;
      if (refused)
        res = std::move(*refused);
      else if (inline_reads_ && r.vetted && !detail::router::may_wait(r))  // read here
        res = router_.handle(r);
      else if (lane.fibers && r.target.starts_with("/commands/"))
        res = co_await on_fiber(lane, [&] { return router_.handle(r); });
      else  // Other database work runs on the workers, never on the I/O thread (a command's
            // fiber, above, decodes it and runs its behaviors there; its transactions wait
            // suspended).
        res = co_await net::co_spawn(
            detail::router::uses_workers(r.target) ? workers_.get_executor()
                                                   : light_.get_executor(),
            [&]() -> awaitable<detail::response> { co_return router_.handle(r); }, use_awaitable);
      if (read_at && app_.store().current_data_version() == read_at)  // nothing committed since
        lane.answers.keep(std::string_view(req.target()), token_key(req),
                          query_of(std::string_view(req.target())), res, *read_at, *read_at);
      const bool keep_alive = req.keep_alive() && !stopping_.load();
      auto out = to_beast(res, version, keep_alive);
      if (req.method() == bhttp::verb::head) {
        // The headers GET would send, Content-Length included, and no body.
        bhttp::response_serializer<bhttp::string_body> serializer(out);
        co_await bhttp::async_write_header(stream, serializer,
                                           net::redirect_error(use_awaitable, ec));
      } else {
        co_await bhttp::async_write(stream, out, net::redirect_error(use_awaitable, ec));
      }
      end_request();
      if (ec || !keep_alive) break;
    }
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    --connections_;
  }

  // Answers a connection over max_connections with a 503 (for ten seconds at most) and closes it.
  awaitable<void> turn_away(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    stream.expires_after(std::chrono::seconds(10));
    co_await refuse(stream, 11, 503, "too many connections");
  }

  awaitable<void> accept_loop() {
    for (;;) {
      beast::error_code ec;
      // Each connection goes to the next I/O thread, its socket bound to that thread's loop.
      auto& lane = *lanes_[next_lane_++ % lanes_.size()];
      tcp::socket socket =
          co_await acceptor_->async_accept(lane.io, net::redirect_error(use_awaitable, ec));
      if (ec) {
        if (stopping_ || ec == net::error::operation_aborted) co_return;
        continue;
      }
      if (connections_.load() >= app_.config().max_connections) {
        net::co_spawn(lane.io, turn_away(std::move(socket)), net::detached);
        continue;
      }
      ++connections_;
      net::co_spawn(lane.io, session(std::move(socket), lane), net::detached);
    }
  }
};

server::server(app& a) : impl_(std::make_unique<impl>(a)) {}

server::~server() {
  stop();
}

void server::start() {
  auto& s = *impl_;
  const auto& listen = s.app_.config().listen;
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos)
    throw error_exception(
        {errc::validation, fmt::format("listen '{}' is not host:port", listen), {}});
  try {
    const auto address = net::ip::make_address(listen.substr(0, colon));
    const auto port = static_cast<std::uint16_t>(std::stoi(listen.substr(colon + 1)));
    s.acceptor_.emplace(s.accept_io_, tcp::endpoint(address, port));
    s.port_ = s.acceptor_->local_endpoint().port();
  } catch (const std::exception& e) {
    throw error_exception(
        {errc::unavailable, fmt::format("cannot listen on {}: {}", listen, e.what()), {}});
  }
  if (s.app_.config().tokens.empty())
    spdlog::warn(
        "no bearer tokens are configured: the admin API (/admin/...) answers only clients on "
        "loopback, and commands and queries need no authentication");
  net::co_spawn(s.accept_io_, s.accept_loop(), net::detached);
  for (auto& lane : s.lanes_) lane->thread = std::thread([&io = lane->io] { io.run(); });
  s.accept_thread_ = std::thread([&s] { s.accept_io_.run(); });
  s.started_ = true;
}

std::uint16_t server::port() const {
  return impl_->port_;
}

void server::stop() {
  auto& s = *impl_;
  if (!s.started_ || s.stopped_) return;
  s.stopped_ = true;
  s.stopping_ = true;
  net::post(s.accept_io_, [&s] {
    beast::error_code ignored;
    s.acceptor_->close(ignored);
  });
  {
    // Requests already read finish, and their responses go out, before anything closes.
    std::unique_lock lock(s.inflight_mutex_);
    s.inflight_cv_.wait_for(lock, std::chrono::seconds(30), [&] { return s.inflight_ == 0; });
  }
  for (auto& lane : s.lanes_) lane->parked->close();
  // Live streams end (their clients reconnect to another server): woken, they see stopping_.
  s.hub_.stop();
  for (int i = 0; i < 200 && s.hub_.open_streams() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  s.accept_io_.stop();
  s.accept_thread_.join();
  for (auto& lane : s.lanes_) lane->io.stop();
  for (auto& lane : s.lanes_) lane->thread.join();
  s.workers_.join();
  s.light_.join();
}

void server::run_until_signal() {
  wait_for_stop_signal();
  spdlog::info("finishing in-flight requests");
  stop();
}

namespace {

// The `serve` verb.
int serve(app& a, std::span<const std::string> args) {
  CLI::App cli{"Serves HTTP on the configured address (listen) until SIGINT/SIGTERM.", "serve"};
  cli.allow_extras();  // ignored, as they always were
  if (auto done = verbs::parse(cli, args, "serve")) return *done;
  // Block the signals first, so that every thread inherits the mask and sigwait gets them.
  block_stop_signals();
  a.migrate();
  server s(a);
  s.start();
  a.start_workers();
  std::cout << "listening on http://" << a.config().listen.substr(0, a.config().listen.rfind(':'))
            << ":" << s.port() << "/" << std::endl;
  s.run_until_signal();
  a.stop_workers();
  return 0;
}

}  // namespace

void install(app& a) {
  a.add_verb("serve",
             "serve               serve HTTP on the configured address until SIGINT/SIGTERM",
             serve);
}

}  // namespace cleave::http
