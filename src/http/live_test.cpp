// Live streams over real sockets (label `live`): a live query's answers as its view moves,
// resumed with Last-Event-ID; the event feed from a position, resumed without a miss or a
// repeat; the limit on open streams; a consumer that stops reading is dropped; the feed's gate.

#include <gtest/gtest.h>

#include <set>
#include <thread>

#include <cleave/http/server.hpp>

#include "http_client.hpp"
#include "sse_client.hpp"
#include "temp_dir.hpp"

namespace live {
struct bump {
  std::string id;
  std::int64_t by = 1;
};
CLEAVE_COMMAND(bump, "live.bump", id, by)

struct burst {
  std::int64_t n = 0;
};
CLEAVE_COMMAND(burst, "live.burst", n)

struct bumped {
  std::string id;
  std::int64_t by = 0;
};
CLEAVE_EVENT(bumped, "live.bumped", id, by)

struct noise {
  std::string text;
};
CLEAVE_EVENT(noise, "live.noise", text)

struct total {
  std::string id;
  using response = std::int64_t;
};
CLEAVE_QUERY(total, "live.total", id)
}  // namespace live

namespace {

using namespace std::chrono_literals;
using cleave::json;
using cleave::testing::sse_stream;

struct live_server : testing::Test {
  cleave::testing::temp_dir dir;
  std::unique_ptr<cleave::app> app;
  std::unique_ptr<cleave::http::server> server;
  std::uint16_t port = 0;

  void start(cleave::app_config cfg = {}) {
    cfg.database = dir.file("live.db");
    cfg.listen = "127.0.0.1:0";
    cfg.log_level = "error";
    app = std::make_unique<cleave::app>(cfg);
    app->commands().add([](const live::bump& c, cleave::write_context& tx) -> cleave::result<void> {
      tx.emit(c.id, live::bumped{c.id, c.by});
      return {};
    });
    app->commands().add(
        [](const live::burst& c, cleave::write_context& tx) -> cleave::result<void> {
          for (std::int64_t i = 0; i < c.n; ++i)
            tx.emit("noise", live::noise{std::string(400, 'x')});
          return {};
        });
    cleave::projection totals{"totals"};
    totals.schema("create table {view}(id text primary key, total bigint not null)")
        .on([](const live::bumped& e, cleave::view_context& v) {
          v.exec(
              "insert into {view}(id, total) values ($1, $2) on conflict(id) do update set "
              "total = {view}.total + excluded.total",
              e.id, e.by);
        });
    app->add_projection(std::move(totals));
    app->queries().add(
        [](const live::total& q, const cleave::read_context& db) -> cleave::result<std::int64_t> {
          return db.one<std::int64_t>("select total from totals where id = $1", q.id).value_or(0);
        });
    app->reads("live.total", {"totals"});
    app->migrate();
    app->start_workers();
    server = std::make_unique<cleave::http::server>(*app);
    server->start();
    port = server->port();
  }
  void TearDown() override {
    if (server) server->stop();
    if (app) app->stop_workers();
  }
  void bump(const std::string& id, std::int64_t by = 1) {
    ASSERT_TRUE(app->commands().send(live::bump{id, by}));
  }
  static std::int64_t result_of(const cleave::testing::sse_event& e) {
    return json::parse(e.data)["result"].get<std::int64_t>();
  }
};

TEST_F(live_server, a_live_query_answers_now_then_each_time_its_view_moves) {
  start();
  bump("a", 5);
  sse_stream s(port, "/queries/live.total/live?id=a");
  ASSERT_EQ(s.status, 200);
  EXPECT_NE(s.head().find("text/event-stream"), std::string::npos);
  auto first = s.next(5s);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->type, "result");
  // The first answer may be read before the projector has applied the bump.
  if (result_of(*first) != 5) {
    first = s.next(5s);
    ASSERT_TRUE(first);
  }
  EXPECT_EQ(result_of(*first), 5);
  EXPECT_FALSE(first->id.empty());
  bump("a", 2);
  const auto second = s.next(5s);
  ASSERT_TRUE(second);
  EXPECT_EQ(result_of(*second), 7);
  EXPECT_NE(second->id, first->id);
  // Another id's changes move the view, not this answer: nothing is sent for them.
  bump("b", 1);
  EXPECT_FALSE(s.next(500ms));
}

TEST_F(live_server, a_resumed_live_query_sends_only_what_moved_past_its_last_event) {
  cleave::app_config cfg;
  cfg.live_heartbeat = 100ms;
  start(cfg);
  bump("r", 1);
  std::string last_id;
  {
    sse_stream s(port, "/queries/live.total/live?id=r");
    auto e = s.next(5s);
    while (e && result_of(*e) != 1) e = s.next(5s);
    ASSERT_TRUE(e);
    last_id = e->id;
  }  // dropped
  {
    // Resumed where it was: nothing new, heartbeats only.
    sse_stream s(port, "/queries/live.total/live?id=r", {{"Last-Event-ID", last_id}});
    ASSERT_EQ(s.status, 200);
    EXPECT_FALSE(s.next(600ms));
    EXPECT_GT(s.comments, 0);  // heartbeats came
  }
  bump("r", 10);  // while nobody listens
  app->projections().wait_for("totals", app->store().head(), cleave::clock::now() + 5s);
  sse_stream s(port, "/queries/live.total/live?id=r", {{"Last-Event-ID", last_id}});
  auto e = s.next(5s);
  ASSERT_TRUE(e);
  EXPECT_EQ(result_of(*e), 11);
  EXPECT_NE(e->id, last_id);
}

TEST_F(live_server, the_event_feed_resumes_without_a_miss_or_a_repeat) {
  start();
  for (int i = 0; i < 30; ++i) bump("f" + std::to_string(i % 3));
  std::vector<std::string> seen;
  std::string resume_at;
  {
    sse_stream s(port, "/events");
    ASSERT_EQ(s.status, 200);
    for (int i = 0; i < 12; ++i) {
      auto e = s.next(5s);
      ASSERT_TRUE(e);
      EXPECT_EQ(e->type, "live.bumped");
      const auto body = json::parse(e->data);
      EXPECT_EQ(body["position"], e->id);
      EXPECT_EQ(body["payload"]["by"], 1);
      seen.push_back(e->id);
    }
    resume_at = seen.back();
  }  // dropped after 12
  std::thread more([&] {
    for (int i = 0; i < 20; ++i) bump("g");
  });
  sse_stream s(port, "/events", {{"Last-Event-ID", resume_at}});
  while (seen.size() < 50) {
    auto e = s.next(5s);
    ASSERT_TRUE(e) << "after " << seen.size();
    seen.push_back(e->id);
  }
  more.join();
  EXPECT_FALSE(s.next(300ms));  // nothing past the 50 events there are
  const auto log = app->store().read_events({}, 100);
  ASSERT_EQ(log.size(), 50u);
  for (std::size_t i = 0; i < log.size(); ++i) EXPECT_EQ(seen[i], log[i].position.to_string());
  // after= does the same as Last-Event-ID; types= filters.
  sse_stream typed(port, "/events?after=" + log[40].position.to_string() + "&types=live.bumped");
  for (std::size_t i = 41; i < 50; ++i) {
    auto e = typed.next(5s);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->id, log[i].position.to_string());
  }
}

TEST_F(live_server, streams_past_the_limit_are_refused_and_a_closed_one_frees_its_place) {
  cleave::app_config cfg;
  cfg.max_live_streams = 2;
  start(cfg);
  auto one = std::make_unique<sse_stream>(port, "/events");
  sse_stream two(port, "/queries/live.total/live?id=x");
  ASSERT_EQ(one->status, 200);
  ASSERT_EQ(two.status, 200);
  sse_stream three(port, "/events");
  EXPECT_EQ(three.status, 503);
  EXPECT_NE(three.head().find("Retry-After"), std::string::npos);
  one.reset();
  bump("x");  // the server notices the closed stream when it next writes to it
  for (int i = 0; i < 100; ++i) {
    sse_stream again(port, "/events");
    if (again.status == 200) return;
    std::this_thread::sleep_for(50ms);
  }
  ADD_FAILURE() << "the closed stream's place was never given back";
}

TEST_F(live_server, a_consumer_that_stops_reading_is_dropped) {
  cleave::app_config cfg;
  cfg.max_live_streams = 1;
  start(cfg);
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(app->commands().send(live::burst{500}));  // ~9 MB
  sse_stream slow(port, "/events", {}, 4096);  // reads nothing from here on
  ASSERT_EQ(slow.status, 200);
  // Its one place is held while the server waits on it, then given back.
  const auto until = std::chrono::steady_clock::now() + 30s;
  for (;;) {
    sse_stream probe(port, "/queries/live.total/live?id=x");
    if (probe.status == 200) break;
    ASSERT_LT(std::chrono::steady_clock::now(), until) << "the stalled stream was never dropped";
    std::this_thread::sleep_for(200ms);
  }
  EXPECT_TRUE(slow.closed_within(20s));
}

TEST_F(live_server, stopping_the_server_ends_its_streams) {
  start();
  sse_stream query(port, "/queries/live.total/live?id=a");
  sse_stream feed(port, "/events");
  ASSERT_EQ(query.status, 200);
  ASSERT_EQ(feed.status, 200);
  const auto begun = std::chrono::steady_clock::now();
  server->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - begun, 3s);
  EXPECT_TRUE(query.closed_within(1s));
  EXPECT_TRUE(feed.closed_within(1s));
}

TEST_F(live_server, bad_live_requests_get_problems) {
  cleave::app_config cfg;
  cfg.tokens["user-token"] = cleave::principal{"ada", {}};
  cfg.tokens["admin-token"] = cleave::principal{"root", {"admin"}};
  start(cfg);
  const std::map<std::string, std::string> admin{{"Authorization", "Bearer admin-token"}};
  EXPECT_EQ(sse_stream(port, "/events").status, 401);
  EXPECT_EQ(sse_stream(port, "/events", {{"Authorization", "Bearer user-token"}}).status, 403);
  EXPECT_EQ(sse_stream(port, "/events?after=nonsense", admin).status, 400);
  EXPECT_EQ(sse_stream(port, "/events?since=1", admin).status, 400);
  // Far in the future: it would wait for events never written.
  EXPECT_EQ(sse_stream(port, "/events?after=ffffffffffffffff.ffffffffffffffff.0", admin).status,
            400);
  EXPECT_EQ(sse_stream(port, "/events",
                       {{"Authorization", "Bearer admin-token"}, {"Last-Event-ID", "x.y"}})
                .status,
            400);
  EXPECT_EQ(sse_stream(port, "/events", admin).status, 200);
  sse_stream unknown(port, "/queries/live.nothing/live", admin);
  EXPECT_EQ(unknown.status, 404);
  EXPECT_NE(unknown.rest().find("unknown query"), std::string::npos);
  EXPECT_EQ(sse_stream(port, "/queries/live.total/live?id=a").status, 401);
  EXPECT_EQ(sse_stream(port, "/queries/live.total/live?nope=1", admin).status, 400);
}

}  // namespace
