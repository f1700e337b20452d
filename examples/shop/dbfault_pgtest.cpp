// Fault injection (ctest label `dbfault`): the shop served over HTTP on loopback to 8 client
// threads that place orders and read stock, while its database fails in one way per test: the
// primary restarts, its backends are killed, a row stays locked, the standby freezes, the primary
// turns read-only, the LISTEN connections die, or (SQLite) another connection holds the write
// lock. Every scenario then checks the same things against the database itself: no order
// answered 2xx is missing, none was applied twice, none refused with a definite 503 was
// committed, every refusal is a 503 with Retry-After and a problem type a client can act on, and
// no read-your-writes read was staler than it asked. It prints its figures (and records them as
// test properties): requests, statuses during the fault, time to recover, latencies before and
// during the fault.
//
// The PostgreSQL scenarios run on a primary and a hot standby of their own (scripts/pg-cluster,
// in a temporary folder), not on the shared `postgres` fixture, because they restart, freeze and
// reconfigure them. Both are stopped and removed at the end, when a scenario fails too.

#include <libpq-fe.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cleave/http/server.hpp>

#include "http_client.hpp"
#include "pg_database.hpp"
#include "shop.hpp"
#include "temp_dir.hpp"

namespace {

using namespace std::chrono_literals;
using cleave::json;
using steady = std::chrono::steady_clock;
using rows = std::vector<std::vector<std::string>>;

// ---- the load's shape ----
constexpr int clients = 8;
// Threads that only read stock (eventual), so that reads go on while every client waits for an
// order.
constexpr int readers = 2;
const std::vector<std::string> products{"cosy", "kettle", "mug", "tea", "teapot"};
constexpr std::int64_t restock_each = 1'000'000;  // the stock never runs out
constexpr auto pace = 10ms;                       // a client's pause between two orders
// After a refusal, instead of Retry-After's second: recovery is measured to about 50 ms.
constexpr auto pause_after_refusal = 50ms;
// An order of unknown outcome is sent again this long after the load stops, then given up.
constexpr auto give_up_after_stop = 5s;
constexpr auto health_every = 100ms;
constexpr std::chrono::milliseconds before_fault = 1500ms, after_fault = 2s;
constexpr auto deadline = 1000ms;  // cfg.request_timeout where a scenario sets it

constexpr std::string_view unavailable = "/problems/unavailable";
constexpr std::string_view timed_out = "/problems/timeout";
constexpr std::string_view outcome_unknown = "/problems/outcome-unknown";

double ms(steady::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}
bool ok(int status) {
  return status >= 200 && status < 300;
}

// cleave::app_config::request_timeout, the deadline of every request over HTTP, is a contract
// the library is gaining; until it has it, the setting is skipped (and the checks that rely on
// it fail).
template <class Config>
void set_request_timeout(Config& cfg, std::chrono::milliseconds t) {
  if constexpr (requires { cfg.request_timeout = t; }) cfg.request_timeout = t;
}

// ---- shell, clusters, SQL ----

// Runs a shell command; its exit code and output (stdout and stderr together).
std::pair<int, std::string> shell(const std::string& command) {
  std::string out;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) throw std::runtime_error("cannot run " + command);
  char buf[4096];
  while (auto n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

void must(const std::string& command) {
  auto [code, out] = shell(command);
  if (code != 0) throw std::runtime_error(fmt::format("`{}` exited {}: {}", command, code, out));
}

std::string first_line(const std::string& file) {
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  if (line.empty()) throw std::runtime_error("nothing in " + file);
  return line;
}

// A cluster scripts/pg-cluster started: its URL and its folder (whose data/ is the data dir).
struct cluster {
  std::string dir, url, root;
  std::string data() const { return root + "/data"; }
  // pg_ctl on it, as the cluster's owner (pg_ctl refuses root).
  std::string pg_ctl(const std::string& args) const {
    return fmt::format(
        "{}$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)/pg_ctl -D {} -l {}/server.log "
        "{} >/dev/null",
        ::geteuid() == 0 ? "runuser -u postgres -- " : "", data(), root, args);
  }
};

// The test's own primary and hot standby; stopped and removed when this goes.
class clusters {
 public:
  clusters() {
    primary_.dir = dir_.file("primary");
    standby_.dir = dir_.file("standby");
    script("start " + primary_.dir);
    try {
      script("standby " + standby_.dir + " " + primary_.dir);
    } catch (...) {
      stop(primary_);
      throw;
    }
    for (auto* c : {&primary_, &standby_}) {
      c->url = first_line(c->dir + "/url");
      c->root = first_line(c->dir + "/root");
    }
  }
  ~clusters() {
    stop(standby_);
    stop(primary_);
  }
  clusters(const clusters&) = delete;
  clusters& operator=(const clusters&) = delete;

  const cluster& primary() const { return primary_; }
  const cluster& standby() const { return standby_; }

 private:
  // Without the variables that make the script hand out a server it did not start.
  static void script(const std::string& args) {
    must("env -u CLEAVE_TEST_PG_URL -u CLEAVE_TEST_PG_STANDBY_URL " CLEAVE_PG_CLUSTER " " + args);
  }
  static void stop(const cluster& c) { (void)shell(CLEAVE_PG_CLUSTER " stop " + c.dir); }

  cleave::testing::temp_dir dir_;  // DIR/url and DIR/root of each; removed last
  cluster primary_, standby_;
};

// Starts the clusters on first use (the SQLite scenario needs none) and stops them after the
// last test, failed or not.
class cluster_environment : public testing::Environment {
 public:
  static clusters& get() {
    if (!running_) {
      running_ = std::make_unique<clusters>();
      // cleave::testing::pg_database creates its databases on the server this names.
      ::setenv("CLEAVE_TEST_PG_URL", running_->primary().url.c_str(), 1);
    }
    return *running_;
  }
  void TearDown() override { running_.reset(); }

 private:
  static inline std::unique_ptr<clusters> running_;
};
testing::Environment* const environment =
    testing::AddGlobalTestEnvironment(new cluster_environment);

class pg_session {
 public:
  explicit pg_session(const std::string& url) : c_(PQconnectdb(url.c_str())) {
    if (PQstatus(c_) != CONNECTION_OK) {
      std::string why = PQerrorMessage(c_);
      PQfinish(c_);
      throw std::runtime_error("connecting to " + url + ": " + why);
    }
  }
  ~pg_session() { PQfinish(c_); }
  pg_session(const pg_session&) = delete;
  pg_session& operator=(const pg_session&) = delete;

  // Runs SQL; the rows it returned, as text.
  rows exec(const std::string& sql) {
    PGresult* r = PQexec(c_, sql.c_str());
    const auto status = PQresultStatus(r);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
      std::string why = PQresultErrorMessage(r);
      PQclear(r);
      throw std::runtime_error(sql + ": " + why);
    }
    rows out(static_cast<std::size_t>(PQntuples(r)));
    for (int i = 0; i < PQntuples(r); ++i)
      for (int j = 0; j < PQnfields(r); ++j)
        out[static_cast<std::size_t>(i)].emplace_back(PQgetvalue(r, i, j));
    PQclear(r);
    return out;
  }

 private:
  PGconn* c_;
};

rows sqlite_rows(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    throw std::runtime_error("cannot open " + path);
  }
  sqlite3_busy_timeout(db, 10'000);
  rows out;
  char* err = nullptr;
  const int rc = sqlite3_exec(
      db, sql.c_str(),
      [](void* to, int n, char** values, char**) {
        auto& row = static_cast<rows*>(to)->emplace_back();
        for (int i = 0; i < n; ++i) row.emplace_back(values[i] ? values[i] : "");
        return 0;
      },
      &out, &err);
  const std::string why = err ? err : "";
  sqlite3_free(err);
  sqlite3_close(db);
  if (rc != SQLITE_OK) throw std::runtime_error(sql + ": " + why);
  return out;
}

// Waits until a server takes connections for `url` (a standby replays a new database first).
void wait_until_accepting(const std::string& url) {
  for (const auto until = steady::now() + 20s; steady::now() < until;) {
    try {
      pg_session s(url);
      return;
    } catch (const std::exception&) {
      std::this_thread::sleep_for(20ms);
    }
  }
  throw std::runtime_error("no connection to " + url + " within 20 s");
}

// What the write tables and the event log hold.
struct db_state {
  std::map<std::string, std::int64_t> stock;  // by product
  std::map<std::string, std::int64_t> sold;   // units in order lines, by product
  std::set<std::string> orders;
  std::map<std::string, int> placed_events;  // shop.order_placed events, by order (stream)
};

db_state read_state(const std::function<rows(const std::string&)>& query) {
  db_state s;
  for (const auto& r : query("select id, stock from products")) s.stock[r[0]] = std::stoll(r[1]);
  for (const auto& r : query("select product_id, sum(quantity) from order_lines group by 1"))
    s.sold[r[0]] = std::stoll(r[1]);
  for (const auto& r : query("select id from orders")) s.orders.insert(r[0]);
  for (const auto& r : query("select stream from cleave_events where type = 'shop.order_placed'"))
    ++s.placed_events[r[0]];
  return s;
}

// ---- the faults ----

struct window {
  steady::time_point start, end;
};

// Undoes a fault when it goes, if it was not undone before (a failed check, an exception).
class undo {
 public:
  explicit undo(std::function<void()> f) : f_(std::move(f)) {}
  ~undo() {
    try {
      now();
    } catch (...) {
    }
  }
  undo(const undo&) = delete;
  undo& operator=(const undo&) = delete;
  void now() {
    if (auto f = std::exchange(f_, nullptr)) f();
  }

 private:
  std::function<void()> f_;
};

// Restarts a cluster (pg_ctl restart -m fast); the window ends when it accepts connections
// again, as seen by polling it every 5 ms (pg_ctl's own wait looks only every 100 ms).
window restart(const cluster& c) {
  window w{steady::now(), {}};
  auto restarted =
      std::async(std::launch::async, [&] { return shell(c.pg_ctl("-m fast -w -t 60 restart")); });
  bool went_down = false;
  for (;;) {
    const bool up = PQping(c.url.c_str()) == PQPING_OK;
    went_down |= !up;
    if (up && (went_down || restarted.wait_for(0s) == std::future_status::ready)) break;
    if (steady::now() > w.start + 60s) throw std::runtime_error("the primary did not come back");
    std::this_thread::sleep_for(5ms);
  }
  w.end = steady::now();
  if (auto [code, out] = restarted.get(); code != 0)
    throw std::runtime_error("pg_ctl restart: " + out);
  return w;
}

// A cluster's postmaster and the processes it started.
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "stat");
    std::string stat;
    std::getline(in, stat);
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    pid_t ppid = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == parent)
      out.push_back(std::stoi(name));
  }
  return out;
}

// SIGSTOP to the postmaster (so that it starts nothing more) and to its children; SIGCONT to
// them all by thaw() or when it goes.
class frozen {
 public:
  explicit frozen(const cluster& c)
      : thaw_([this] {
          for (const pid_t p : pids_) ::kill(p, SIGCONT);
        }) {
    const pid_t postmaster = std::stoi(first_line(c.data() + "/postmaster.pid"));
    pids_.push_back(postmaster);
    ::kill(postmaster, SIGSTOP);
    for (const pid_t child : children_of(postmaster)) {
      pids_.push_back(child);
      ::kill(child, SIGSTOP);
    }
  }
  void thaw() { thaw_.now(); }
  std::size_t processes() const { return pids_.size(); }

 private:
  std::vector<pid_t> pids_;
  undo thaw_;
};

void set_read_only(const std::string& url, bool on) {
  pg_session s(url);
  s.exec("set default_transaction_read_only = off");  // so that this session can turn it off
  s.exec(on ? "alter system set default_transaction_read_only = on"
            : "alter system reset default_transaction_read_only");
  s.exec("select pg_reload_conf()");
}

// BEGIN IMMEDIATE on a SQLite connection of its own: the write lock, until release().
class sqlite_write_lock {
 public:
  explicit sqlite_write_lock(const std::string& path) {
    if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK)
      throw std::runtime_error("cannot open " + path);
    sqlite3_busy_timeout(db_, 10'000);
    exec("begin immediate");
  }
  ~sqlite_write_lock() { sqlite3_close(db_); }
  sqlite_write_lock(const sqlite_write_lock&) = delete;
  sqlite_write_lock& operator=(const sqlite_write_lock&) = delete;
  void release() { exec("rollback"); }

 private:
  void exec(const char* sql) {
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK)
      throw std::runtime_error(std::string(sql) + ": " + sqlite3_errmsg(db_));
  }
  sqlite3* db_ = nullptr;
};

// ---- the load ----

enum class kind {
  order,       // POST /commands/shop.place_order (one attempt)
  read,        // GET /queries/shop.product_stock, eventual
  fresh_read,  // the same at the position of the client's order just placed
  own_order,   // GET /queries/shop.order_summary of that order, at its position
  health,      // GET /health
};

struct sample {
  kind what = kind::order;
  steady::time_point start, end;
  int status = 0;            // 0: no answer (connection closed, or 10 s without one)
  std::string type, detail;  // of a non-2xx problem body
  bool retry_after = false;
  std::string order_id, product;
  std::int64_t stock = -1;  // a read's answer
  double latency() const { return ms(end - start); }
};

struct order_record {
  std::string id, product;
  steady::time_point first_start, end;  // the first attempt sent; the final answer received
  int status = 0, attempts = 0;         // of the final answer
  std::string type, position;
  bool ambiguous = false;                      // an attempt answered outcome-unknown, or nothing
  std::optional<steady::duration> seen_after;  // read-your-writes: the answer to its summary read
};

std::string describe(const sample& s) {
  return fmt::format("{} {} {} {} {:.0f} ms: {}",
                     s.what == kind::order    ? "order"
                     : s.what == kind::health ? "health"
                                              : "read",
                     s.order_id.empty() ? s.product : s.order_id, s.status, s.type, s.latency(),
                     s.detail.substr(0, 160));
}

// One client's keep-alive connection, opened again when the server closed it.
class connection {
 public:
  explicit connection(std::uint16_t port) : port_(port) {}

  sample send(kind what, const std::string& method, const std::string& target,
              const std::string& body, const std::map<std::string, std::string>& headers,
              cleave::testing::http_reply& reply) {
    sample s;
    s.what = what;
    s.start = steady::now();
    reply = {};
    try {
      if (!c_) c_ = std::make_unique<cleave::testing::http_connection>(port_);
      reply = c_->request(method, target, body, headers);
    } catch (const std::exception&) {
    }
    s.end = steady::now();
    s.status = reply.status;
    if (reply.status == 0 || reply.headers["connection"] == "close") c_.reset();
    s.retry_after = reply.headers.contains("retry-after");
    if (!ok(reply.status)) {
      const auto j = json::parse(reply.body, nullptr, false);
      if (j.is_object()) {
        s.type = j.value("type", "");
        s.detail = j.value("detail", "");
      } else {
        s.detail = reply.body.substr(0, 200);
      }
    }
    return s;
  }

 private:
  std::uint16_t port_;
  std::unique_ptr<cleave::testing::http_connection> c_;
};

enum class read_mode {
  stock,      // each order is followed by a stock read, every other one at the order's position
  own_order,  // each order is followed by reads of its summary at its position until one is 2xx
};

// `clients` threads placing orders and reading, `readers` only reading, and one polling /health,
// until stop().
class load {
 public:
  load(std::uint16_t port, read_mode mode) : port_(port), mode_(mode) {
    for (int c = 0; c < clients; ++c) threads_.emplace_back([this, c] { run_client(c); });
    for (int r = 0; r < readers; ++r) threads_.emplace_back([this, r] { run_reader(r); });
    threads_.emplace_back([this] { poll_health(); });
  }
  ~load() { stop(); }
  load(const load&) = delete;
  load& operator=(const load&) = delete;

  void stop() {
    if (threads_.empty()) return;
    stopped_at_ = steady::now();
    stopping_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  const std::vector<sample>& samples() const { return samples_; }
  const std::vector<order_record>& orders() const { return orders_; }

 private:
  bool giving_up() const { return stopping_ && steady::now() > stopped_at_ + give_up_after_stop; }

  void run_client(int c) {
    connection conn(port_);
    std::vector<sample> mine;
    std::vector<order_record> placed;
    for (int seq = 0; !stopping_; ++seq) {
      const auto& product = products[static_cast<std::size_t>(c + seq) % products.size()];
      auto o = place(conn, fmt::format("c{}-{}", c, seq), product, mine);
      if (mode_ == read_mode::stock)
        read_stock(conn, o, seq, mine);
      else if (!o.position.empty())
        read_own_order(conn, o, mine);
      if (!ok(o.status)) std::this_thread::sleep_for(pause_after_refusal);
      placed.push_back(std::move(o));
      std::this_thread::sleep_for(pace);
    }
    std::lock_guard lock(mutex_);
    samples_.insert(samples_.end(), mine.begin(), mine.end());
    orders_.insert(orders_.end(), placed.begin(), placed.end());
  }

  // One unit of `product`, with the order id as its Idempotency-Key. A definite answer ends it;
  // one of unknown outcome (outcome-unknown, or none) is sent again with the same key until a
  // definite one.
  order_record place(connection& conn, std::string id, const std::string& product,
                     std::vector<sample>& out) {
    order_record o;
    o.id = std::move(id);
    o.product = product;
    const auto body = fmt::format(
        R"({{"order_id":"{}","customer_id":"ada","lines":[{{"product_id":"{}","quantity":1}}]}})",
        o.id, product);
    const std::map<std::string, std::string> headers{{"Content-Type", "application/json"},
                                                     {"Idempotency-Key", o.id}};
    cleave::testing::http_reply reply;
    for (;;) {
      auto s = conn.send(kind::order, "POST", "/commands/shop.place_order", body, headers, reply);
      s.order_id = o.id;
      s.product = product;
      if (o.attempts++ == 0) o.first_start = s.start;
      o.end = s.end;
      o.status = s.status;
      o.type = s.type;
      out.push_back(s);
      if (ok(s.status)) {
        o.position = reply.headers["cleave-position"];
        return o;
      }
      o.ambiguous |= s.status == 0 || s.type == outcome_unknown;
      if (!o.ambiguous || (s.status != 0 && s.status != 503) || giving_up()) return o;
      std::this_thread::sleep_for(pause_after_refusal);
    }
  }

  // The stock of the order's product; every other read asks for the order's position, by
  // Cleave-Min-Position or Cleave-Consistency: at_least=.
  void read_stock(connection& conn, const order_record& o, int seq, std::vector<sample>& out) {
    std::map<std::string, std::string> headers;
    const bool fresh = !o.position.empty() && seq % 2 == 0;
    if (fresh && seq % 4 == 0) headers["Cleave-Min-Position"] = o.position;
    if (fresh && seq % 4 != 0) headers["Cleave-Consistency"] = "at_least=" + o.position;
    cleave::testing::http_reply reply;
    auto s = conn.send(fresh ? kind::fresh_read : kind::read, "GET",
                       "/queries/shop.product_stock?product_id=" + o.product, "", headers, reply);
    s.product = o.product;
    if (fresh) s.order_id = o.id;
    if (ok(s.status)) {
      const auto j = json::parse(reply.body, nullptr, false);
      if (j.is_object() && j.contains("result"))
        s.stock = j["result"].value("stock", std::int64_t{-1});
    }
    out.push_back(s);
  }

  // Read-your-writes through the async view: the order's summary at its position, until 2xx.
  void read_own_order(connection& conn, order_record& o, std::vector<sample>& out) {
    const std::map<std::string, std::string> headers{{"Cleave-Min-Position", o.position}};
    cleave::testing::http_reply reply;
    for (;;) {
      auto s = conn.send(kind::own_order, "GET", "/queries/shop.order_summary?order_id=" + o.id, "",
                         headers, reply);
      s.order_id = o.id;
      s.product = o.product;
      out.push_back(s);
      if (ok(s.status)) {
        o.seen_after = s.end - o.end;
        return;
      }
      if (giving_up()) return;
      std::this_thread::sleep_for(pause_after_refusal);
    }
  }

  void run_reader(int r) {
    connection conn(port_);
    cleave::testing::http_reply reply;
    std::vector<sample> mine;
    for (int seq = 0; !stopping_; ++seq) {
      const auto& product = products[static_cast<std::size_t>(r + seq) % products.size()];
      auto s = conn.send(kind::read, "GET", "/queries/shop.product_stock?product_id=" + product, "",
                         {}, reply);
      s.product = product;
      mine.push_back(s);
      std::this_thread::sleep_for(ok(s.status) ? pace : pause_after_refusal);
    }
    std::lock_guard lock(mutex_);
    samples_.insert(samples_.end(), mine.begin(), mine.end());
  }

  void poll_health() {
    connection conn(port_);
    cleave::testing::http_reply reply;
    std::vector<sample> mine;
    for (auto next = steady::now(); !stopping_;) {
      mine.push_back(conn.send(kind::health, "GET", "/health", "", {}, reply));
      next += health_every;
      std::this_thread::sleep_until(next);
    }
    std::lock_guard lock(mutex_);
    samples_.insert(samples_.end(), mine.begin(), mine.end());
  }

  std::uint16_t port_;
  read_mode mode_;
  std::atomic<bool> stopping_{false};
  steady::time_point stopped_at_;
  std::mutex mutex_;
  std::vector<sample> samples_;
  std::vector<order_record> orders_;
  std::vector<std::thread> threads_;
};

// ---- figures ----

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  const auto i = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
  return v[i];
}

bool in(steady::time_point t, const window& w) {
  return t >= w.start && t <= w.end;
}

using sample_filter = std::function<bool(const sample&)>;

bool is_ok_order(const sample& s) {
  return s.what == kind::order && ok(s.status);
}
bool is_read(const sample& s) {
  return s.what == kind::read || s.what == kind::fresh_read || s.what == kind::own_order;
}

// Latencies (ms) of the samples `pick` chooses sent in `w`.
std::vector<double> latencies(const std::vector<sample>& samples, const window& w,
                              const sample_filter& pick) {
  std::vector<double> out;
  for (const auto& s : samples)
    if (pick(s) && in(s.start, w)) out.push_back(s.latency());
  return out;
}

std::string statuses(const std::map<int, int>& counts) {
  std::string out;
  for (const auto& [status, n] : counts)
    out += fmt::format("{}{}x{}", out.empty() ? "" : " ", status, n);
  return out.empty() ? "-" : out;
}

struct figures {
  std::size_t requests = 0, ok = 0;
  std::map<int, int> during;       // statuses of the requests sent during a fault
  std::vector<double> recover_ms;  // per fault: its end to the first 2xx order (NaN: none)
  int lost = 0, duplicated = 0, committed_but_503 = 0, committed_but_refused = 0;
  int unresolved = 0, bad_refusals = 0, stale_reads = 0;
  double p50_before = 0, p99_before = 0, p50_during = 0, p99_during = 0;
};

// ---- the scenarios' harness ----

class dbfault : public testing::Test {
 protected:
  // The shop on a database of its own on the test's primary, reading from its standby.
  void start_on_postgres(cleave::app_config cfg = {}) {
    auto& pg = cluster_environment::get();
    db_ = std::make_unique<cleave::testing::pg_database>();
    cfg.database = db_->url();
    cfg.replicas = {cleave::testing::with_database(pg.standby().url, db_->name())};
    wait_until_accepting(cfg.replicas[0]);
    inspect_ = [url = db_->url()] {
      pg_session s(url);
      return read_state([&](const std::string& sql) { return s.exec(sql); });
    };
    start(std::move(cfg));
  }

  // The shop on a SQLite file.
  void start_on_sqlite(cleave::app_config cfg = {}) {
    cfg.database = dir_.file("shop.db");
    inspect_ = [path = cfg.database] {
      return read_state([&](const std::string& sql) { return sqlite_rows(path, sql); });
    };
    start(std::move(cfg));
  }

  void start(cleave::app_config cfg) {
    cfg.listen = "127.0.0.1:0";
    // A worker for each client and then some: latencies measure the database, not a queue for
    // workers.
    cfg.workers = clients + readers + 4;
    cfg.log_level = "error";
    app_ = std::make_unique<cleave::app>(cfg);
    shop::install(*app_);
    app_->migrate();
    shop::seed_demo_data(*app_);
    for (const auto& p : products)
      if (auto r = app_->commands().send(shop::restock{p, restock_each}); !r)
        throw std::runtime_error(r.error().describe());
    if (!cfg.run_projector) {  // a second app runs the projector, as `shop project` would
      cfg.run_projector = true;
      cfg.replicas.clear();
      projector_ = std::make_unique<cleave::app>(cfg);
      shop::install(*projector_);
      projector_->migrate();
      projector_->start_workers();
    }
    server_ = std::make_unique<cleave::http::server>(*app_);
    server_->start();
    app_->start_workers();
    initial_ = inspect_();
  }

  void start_load(read_mode mode = read_mode::stock) {
    load_started_ = steady::now();
    load_ = std::make_unique<load>(server_->port(), mode);
    std::this_thread::sleep_for(before_fault);
  }

  void SetUp() override {
    fmt::print("[dbfault] {}\n", testing::UnitTest::GetInstance()->current_test_info()->name());
  }

  void TearDown() override {
    load_.reset();
    if (server_) server_->stop();
    server_.reset();
    projector_.reset();
    app_.reset();
    db_.reset();
  }

  // Records a figure as a test property and prints it.
  void note(const std::string& key, const std::string& value) {
    RecordProperty(key, value);
    fmt::print("  {:<34} {}\n", key, value);
  }

  // Stops the load, checks what every scenario must hold, prints and returns the figures.
  // `unaffected` picks the requests whose latencies are compared before and during the faults.
  figures finish(const sample_filter& unaffected = is_ok_order) {
    const auto stopping = steady::now();
    load_->stop();
    const auto stopped = steady::now();
    const auto& samples = load_->samples();
    const auto& orders = load_->orders();
    const auto final_state = inspect_();
    figures f;
    check_effects(orders, final_state, f);
    check_refusals(samples, f);
    f.stale_reads = stale_reads(samples, orders);
    measure(samples, unaffected, f);

    std::string faults;
    for (const auto& w : faults_)
      faults += fmt::format("{}{:.0f}", faults.empty() ? "" : " ", ms(w.end - w.start));
    note("setup_load_stop_s",
         fmt::format("{:.1f} / {:.1f} / {:.1f}", ms(load_started_ - created_) / 1000,
                     ms(stopping - load_started_) / 1000, ms(stopped - stopping) / 1000));
    note("fault_ms", faults.empty() ? "-" : faults);
    note("requests", std::to_string(f.requests));
    note("requests_2xx", std::to_string(f.ok));
    note("orders", fmt::format("{} (2xx {})", orders.size(),
                               std::count_if(orders.begin(), orders.end(),
                                             [](const order_record& o) { return ok(o.status); })));
    note("statuses_during_fault", statuses(f.during));
    std::string recover;
    for (const double r : f.recover_ms)
      recover += fmt::format("{}{:.0f}", recover.empty() ? "" : " ", r);
    note("recover_ms", recover.empty() ? "-" : recover);
    note("committed_but_503", std::to_string(f.committed_but_503));
    note("committed_but_other_refusal", std::to_string(f.committed_but_refused));
    note("lost", std::to_string(f.lost));
    note("duplicated", std::to_string(f.duplicated));
    note("unresolved_unknown_outcomes", std::to_string(f.unresolved));
    note("bad_refusals", std::to_string(f.bad_refusals));
    note("stale_reads", std::to_string(f.stale_reads));
    note("unaffected_p50_p99_before_ms",
         fmt::format("{:.1f} / {:.1f}", f.p50_before, f.p99_before));
    note("unaffected_p50_p99_during_ms",
         fmt::format("{:.1f} / {:.1f}", f.p50_during, f.p99_during));

    EXPECT_EQ(f.lost, 0) << "orders answered 2xx are missing from the database";
    EXPECT_EQ(f.duplicated, 0) << "orders applied more than once (events or stock)";
    EXPECT_EQ(f.committed_but_503, 0) << "orders refused with a definite 503 were committed";
    EXPECT_EQ(f.committed_but_refused, 0) << "orders refused otherwise were committed";
    EXPECT_EQ(f.unresolved, 0) << "orders whose outcome was still unknown at the end";
    EXPECT_EQ(f.bad_refusals, 0) << "refusals that are not a retryable 503 (see above)";
    EXPECT_EQ(f.stale_reads, 0) << "reads staler than the position they asked for";
    return f;
  }

  // Each order's final, definite answer against the database: 2xx if and only if it is there,
  // once (one event, and the stock down by exactly the units of the orders there).
  void check_effects(const std::vector<order_record>& orders, const db_state& now, figures& f) {
    for (const auto& o : orders) {
      const bool there = now.orders.contains(o.id);
      const bool unknown_yet = o.ambiguous && (o.status == 0 || o.status == 503);
      if (ok(o.status)) {
        f.lost += there ? 0 : 1;
      } else if (unknown_yet) {
        ++f.unresolved;
      } else if (there) {
        if (f.committed_but_503 + f.committed_but_refused < 5)
          ADD_FAILURE() << "order " << o.id << " was committed but answered " << o.status << " "
                        << o.type;
        ++(o.status == 503 ? f.committed_but_503 : f.committed_but_refused);
      }
    }
    for (const auto& [id, n] : now.placed_events)
      if (n != 1 || !now.orders.contains(id)) ++f.duplicated;
    for (const auto& id : now.orders)
      if (!now.placed_events.contains(id)) ++f.duplicated;
    for (const auto& [product, stock] : now.stock) {
      const auto sold = [&](const db_state& s) {
        auto it = s.sold.find(product);
        return it == s.sold.end() ? 0 : it->second;
      };
      const auto expected = initial_.stock.at(product) - (sold(now) - sold(initial_));
      if (stock != expected) {
        ++f.duplicated;
        ADD_FAILURE() << product << ": stock " << stock << ", expected " << expected;
      }
    }
  }

  // Every non-2xx is a 503 with Retry-After, a type a client can act on, and no SQL in detail.
  void check_refusals(const std::vector<sample>& samples, figures& f) {
    int shown = 0;
    for (const auto& s : samples) {
      if (ok(s.status)) continue;
      std::string detail = s.detail;
      std::transform(detail.begin(), detail.end(), detail.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      const bool good =
          s.status == 503 && s.retry_after &&
          (s.type == unavailable || s.type == timed_out || s.type == outcome_unknown) &&
          detail.find("select ") == std::string::npos &&
          detail.find("insert ") == std::string::npos &&
          detail.find("update ") == std::string::npos &&
          detail.find("sqlstate") == std::string::npos;
      if (good) continue;
      ++f.bad_refusals;
      if (shown++ < 5)
        ADD_FAILURE() << "not a retryable 503" << (s.retry_after ? "" : " (no Retry-After)") << ": "
                      << describe(s);
    }
  }

  // A read at an order's position must show that order's unit gone, and the units of every
  // order answered 2xx before it was sent (they committed before it): at most
  // initial - 1 - those.
  int stale_reads(const std::vector<sample>& samples, const std::vector<order_record>& orders) {
    std::map<std::string, const order_record*> by_id;
    std::map<std::string, std::vector<steady::time_point>> answered;  // 2xx, by product
    for (const auto& o : orders) {
      by_id[o.id] = &o;
      if (ok(o.status)) answered[o.product].push_back(o.end);
    }
    for (auto& [product, times] : answered) std::sort(times.begin(), times.end());
    int stale = 0;
    for (const auto& s : samples) {
      if (s.what != kind::fresh_read || !ok(s.status)) continue;
      const auto& o = *by_id.at(s.order_id);
      const auto& times = answered[o.product];
      const auto earlier =
          std::lower_bound(times.begin(), times.end(), o.first_start) - times.begin();
      const auto at_most = initial_.stock.at(o.product) - 1 - earlier;
      if (s.stock > at_most && stale++ < 5)
        ADD_FAILURE() << "a read at the position of " << o.id << " saw stock " << s.stock << " of "
                      << o.product << ", at most " << at_most << " expected";
    }
    return stale;
  }

  void measure(const std::vector<sample>& samples, const sample_filter& unaffected, figures& f) {
    f.requests = samples.size();
    f.ok = static_cast<std::size_t>(std::count_if(samples.begin(), samples.end(),
                                                  [](const sample& s) { return ok(s.status); }));
    const window before{steady::time_point::min(),
                        faults_.empty() ? steady::time_point::max() : faults_.front().start};
    std::vector<double> during;
    for (const auto& w : faults_) {
      for (const auto& s : samples)
        if (in(s.start, w)) ++f.during[s.status];
      auto l = latencies(samples, w, unaffected);
      during.insert(during.end(), l.begin(), l.end());
      std::optional<steady::time_point> first;
      for (const auto& s : samples)
        if (is_ok_order(s) && s.end >= w.end && (!first || s.end < *first)) first = s.end;
      f.recover_ms.push_back(first ? ms(*first - w.end) : std::numeric_limits<double>::quiet_NaN());
    }
    const auto earlier = latencies(samples, before, unaffected);
    f.p50_before = percentile(earlier, 0.5);
    f.p99_before = percentile(earlier, 0.99);
    f.p50_during = percentile(during, 0.5);
    f.p99_during = percentile(during, 0.99);
  }

  // Orders `pick` chooses, sent in `w` early enough that their deadline passed in it, answer 503
  // /problems/timeout at about the deadline (not at some later timeout of the database's).
  void expect_refused_at_deadline(const window& w, const sample_filter& pick) {
    int checked = 0, wrong = 0;
    std::vector<double> seen;
    for (const auto& s : load_->samples()) {
      if (s.what != kind::order || !pick(s) || !in(s.start, {w.start, w.end - deadline - 250ms}))
        continue;
      ++checked;
      seen.push_back(s.latency());
      const bool good = s.status == 503 && s.type == timed_out &&
                        s.end - s.start >= deadline * 9 / 10 && s.end - s.start <= deadline + 500ms;
      if (!good && wrong++ < 5)
        ADD_FAILURE() << "not refused at the deadline (" << deadline.count()
                      << " ms): " << describe(s);
    }
    note("deadline_orders", std::to_string(checked));
    note("deadline_orders_latency_min_max_ms",
         seen.empty() ? "-"
                      : fmt::format("{:.0f} / {:.0f}", *std::min_element(seen.begin(), seen.end()),
                                    *std::max_element(seen.begin(), seen.end())));
    EXPECT_GT(checked, 0);
    EXPECT_EQ(wrong, 0);
  }

  // The reads sent during the faults: how many, by status, and their latencies.
  std::map<int, int> reads_during(std::vector<double>* latency = nullptr) {
    std::map<int, int> out;
    for (const auto& w : faults_)
      for (const auto& s : load_->samples())
        if (is_read(s) && in(s.start, w)) {
          ++out[s.status];
          if (latency) latency->push_back(s.latency());
        }
    return out;
  }

  std::uint16_t port() const { return server_->port(); }

  cleave::testing::temp_dir dir_;
  std::unique_ptr<cleave::testing::pg_database> db_;
  std::function<db_state()> inspect_;
  std::unique_ptr<cleave::app> app_, projector_;
  std::unique_ptr<cleave::http::server> server_;
  db_state initial_;
  std::unique_ptr<load> load_;
  std::vector<window> faults_;

  // Holds a fault that has just begun for `how_long`, ends it with `end`, and records its window.
  template <class End>
  void hold_fault(std::chrono::milliseconds how_long, End&& end) {
    window w{steady::now(), {}};
    std::this_thread::sleep_for(how_long);
    end();
    w.end = steady::now();
    faults_.push_back(w);
  }
  steady::time_point created_ = steady::now(), load_started_;
};

const cluster& primary() {
  return cluster_environment::get().primary();
}

// ---- the scenarios ----

TEST_F(dbfault, primary_restart_x3) {
  start_on_postgres();
  start_load();
  for (int i = 0; i < 3; ++i) {
    faults_.push_back(restart(primary()));
    std::this_thread::sleep_for(after_fault);
  }
  const auto f = finish();
  for (const double r : f.recover_ms)
    EXPECT_LE(r, 1000.0) << "no order answered 2xx within 1 s of PostgreSQL accepting connections";
}

TEST_F(dbfault, backends_terminated) {
  start_on_postgres();
  start_load();
  pg_session admin(primary().url);
  const auto kill = fmt::format(
      "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{}' and pid <> "
      "pg_backend_pid() and backend_type = 'client backend'",
      db_->name());
  window w{steady::now(), {}};
  std::size_t killed = 0;
  for (auto next = w.start; next < w.start + 20s; next += 200ms) {
    std::this_thread::sleep_until(next);
    killed += admin.exec(kill).size();
  }
  w.end = steady::now();
  faults_.push_back(w);
  std::this_thread::sleep_for(after_fault);
  finish();  // committed_but_503 == 0 is among its checks
  note("backends_terminated", std::to_string(killed));
  EXPECT_GT(killed, 0u);
}

TEST_F(dbfault, row_locked) {
  cleave::app_config cfg;
  set_request_timeout(cfg, deadline);
  start_on_postgres(cfg);
  start_load();
  {
    pg_session holder(db_->url());
    holder.exec("begin");
    holder.exec("select * from products where id = 'cosy' for update");
    hold_fault(10s, [&] { holder.exec("rollback"); });
  }
  std::this_thread::sleep_for(after_fault);
  const auto f = finish([](const sample& s) { return is_ok_order(s) && s.product != "cosy"; });
  EXPECT_LE(f.p50_during, 1.5 * f.p50_before + 5.0) << "orders for other products slowed down";
  expect_refused_at_deadline(faults_[0], [](const sample& s) { return s.product == "cosy"; });
  // Waiting behind the workers would cost a poll seconds; a poll now and then over 100 ms is the
  // 2-core machine's scheduling (seen once in ~10 runs, at 244 ms, with nothing else running).
  int failed = 0, slow = 0, stalled = 0, checked = 0;
  std::vector<double> health;
  for (const auto& s : load_->samples()) {
    if (s.what != kind::health) continue;
    ++checked;
    health.push_back(s.latency());
    slow += s.latency() > 100.0;
    const bool bad = !ok(s.status) || s.latency() > 1000.0;
    if (bad && failed++ < 5) ADD_FAILURE() << "/health: " << describe(s);
    stalled += bad;
  }
  note("health_polls", std::to_string(checked));
  note("health_polls_over_100ms", std::to_string(slow));
  note("health_p50_max_ms",
       fmt::format("{:.1f} / {:.1f}", percentile(health, 0.5), percentile(health, 1.0)));
  EXPECT_EQ(stalled, 0) << "/health failed or waited over 1 s";
  EXPECT_LE(slow, std::max(1, checked / 50)) << "/health took over 100 ms in more than 2% of polls";
}

// The values of cleave_replica_up in /metrics ("absent" when there is none).
std::string replica_up(std::uint16_t port) {
  const auto r = cleave::testing::http(port, "GET", "/metrics");
  if (r.status != 200) return fmt::format("status {}", r.status);
  std::string values;
  for (auto at = r.body.find("cleave_replica_up{"); at != std::string::npos;
       at = r.body.find("cleave_replica_up{", at + 1)) {
    const auto end = r.body.find('\n', at);
    const auto line = r.body.substr(at, end - at);
    values += (values.empty() ? "" : " ") + line.substr(line.rfind(' ') + 1);
  }
  return values.empty() ? "absent" : values;
}

TEST_F(dbfault, standby_frozen) {
  start_on_postgres();
  start_load();
  std::string up_during;
  {
    frozen standby(cluster_environment::get().standby());
    window w{steady::now(), {}};
    note("standby_processes_stopped", std::to_string(standby.processes()));
    auto metrics = std::async(std::launch::async, [p = port()] {
      std::this_thread::sleep_for(3s);
      return replica_up(p);
    });
    std::this_thread::sleep_until(w.start + 10s);
    standby.thaw();
    w.end = steady::now();
    faults_.push_back(w);
    up_during = metrics.get();
  }
  std::this_thread::sleep_for(after_fault);
  const auto up_after = replica_up(port());
  const auto f = finish();  // stale_reads == 0 is among its checks
  std::vector<double> latency;
  const auto reads = reads_during(&latency);
  int total = 0, refused = 0;
  for (const auto& [status, n] : reads) {
    total += n;
    refused += ok(status) ? 0 : n;
  }
  note("reads_during_fault", statuses(reads));
  note("reads_p50_p99_during_ms",
       fmt::format("{:.1f} / {:.1f}", percentile(latency, 0.5), percentile(latency, 0.99)));
  note("replica_up_during_after", up_during + " / " + up_after);
  EXPECT_LE(f.p50_during, 1.5 * f.p50_before + 5.0) << "writes slowed down";
  EXPECT_GT(total, 0);
  EXPECT_LE(refused, std::max(2, total / 50)) << "more than 2% of reads refused";
  EXPECT_EQ(up_during, "0");
  EXPECT_EQ(up_after, "1");
}

TEST_F(dbfault, primary_read_only) {
  start_on_postgres();
  start_load();
  const auto url = primary().url;
  undo writable([url] { set_read_only(url, false); });
  set_read_only(url, true);
  hold_fault(5s, [&] { writable.now(); });
  std::this_thread::sleep_for(after_fault);
  const auto f = finish();  // the refusals are 503s, never 403, and nothing is half-applied
  int refused = 0, accepted = 0;
  for (const auto& s : load_->samples())
    if (s.what == kind::order && in(s.start, {faults_[0].start + 250ms, faults_[0].end}) &&
        s.end <= faults_[0].end)
      ++(ok(s.status) ? accepted : refused);
  note("orders_refused_accepted_during", fmt::format("{} / {}", refused, accepted));
  EXPECT_GT(refused, 0);
  EXPECT_EQ(accepted, 0) << "orders went through while the primary was read-only";
  EXPECT_LE(f.recover_ms.at(0), 1000.0) << "orders did not succeed within 1 s of it";
}

TEST_F(dbfault, listen_connection_killed) {
  cleave::app_config cfg;
  cfg.run_projector = false;  // a second app on the database runs it
  start_on_postgres(cfg);
  start_load(read_mode::own_order);
  pg_session admin(primary().url);
  const auto listening = fmt::format(
      "from pg_stat_activity where datname = '{}' and query ilike 'listen%'", db_->name());
  const auto count = [&] { return std::stoi(admin.exec("select count(*) " + listening)[0][0]); };
  const int listeners = count();
  window w{steady::now(), {}};
  const auto killed = admin.exec("select pg_terminate_backend(pid) " + listening).size();
  std::this_thread::sleep_for(20ms);
  while (count() < listeners && steady::now() < w.start + 3s) std::this_thread::sleep_for(20ms);
  const auto relistened = steady::now();
  const bool listening_again = count() >= listeners;
  // Down until they listen again, and at least the first second.
  w.end = std::max(relistened, w.start + 1s);
  faults_.push_back(w);
  std::this_thread::sleep_until(w.end + after_fault);
  const auto f = finish();
  std::vector<double> before, down, after;
  for (const auto& o : load_->orders()) {
    if (!o.seen_after) continue;
    const double l = ms(*o.seen_after);
    if (o.end < w.start) before.push_back(l);
    if (in(o.end, w)) down.push_back(l);
    if (o.end >= w.start + 1s) after.push_back(l);
  }
  note("listen_connections_killed", fmt::format("{} of {}", killed, listeners));
  note("listening_again_after_ms",
       listening_again ? fmt::format("{:.0f}", ms(relistened - w.start)) : "never");
  note("ryw_p50_before_ms",
       fmt::format("{:.1f} ({} reads)", percentile(before, 0.5), before.size()));
  note("ryw_p99_down_ms", fmt::format("{:.1f} ({} reads)", percentile(down, 0.99), down.size()));
  note("ryw_p50_after_1s_ms",
       fmt::format("{:.1f} ({} reads)", percentile(after, 0.5), after.size()));
  EXPECT_GE(killed, 1u);
  EXPECT_LE(percentile(down, 0.99), 250.0) << "read-your-writes stalled while LISTEN was down";
  EXPECT_LE(percentile(after, 0.5), 2 * percentile(before, 0.5) + 20.0)
      << "read-your-writes not back to normal within 1 s of the kill";
}

TEST_F(dbfault, sqlite_write_lock_held) {
  cleave::app_config cfg;
  set_request_timeout(cfg, deadline);
  start_on_sqlite(cfg);
  start_load();
  {
    sqlite_write_lock lock(dir_.file("shop.db"));
    hold_fault(3s, [&] { lock.release(); });
  }
  std::this_thread::sleep_for(after_fault);
  const auto f = finish();
  expect_refused_at_deadline(faults_[0], [](const sample&) { return true; });
  const auto reads = reads_during();
  note("reads_during_fault", statuses(reads));
  for (const auto& [status, n] : reads)
    EXPECT_TRUE(ok(status)) << n << " reads answered " << status;
  EXPECT_LE(f.recover_ms.at(0), 1000.0) << "orders did not succeed within 1 s of the release";
}

}  // namespace
