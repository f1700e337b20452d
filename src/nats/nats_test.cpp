// The relay and the inbox against a real nats-server (label `nats`): every event in the stream
// once and in order through kill -9 of the relay and a broker restart; one effect per inbox
// message through kill -9 of the inbox; refused messages parked and replayed.

#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <nats/nats.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cleave/http/server.hpp>

#include "http_client.hpp"
#include "nats_server.hpp"
#include "temp_dir.hpp"
#include "test_app.hpp"

namespace {

using namespace std::chrono_literals;

// A process of the tests' app (cleave_nats_helper VERB...), killed when it goes.
struct helper {
  pid_t pid = -1;
  helper(const std::string& database, const std::string& url, std::vector<std::string> args) {
    pid = fork();
    if (pid == 0) {
      setenv("CLEAVE_DATABASE", database.c_str(), 1);
      setenv("NATS_URL", url.c_str(), 1);
      std::vector<char*> argv{const_cast<char*>(NATS_HELPER)};
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(NATS_HELPER, argv.data());
      _exit(127);
    }
  }
  helper(const helper&) = delete;
  helper& operator=(const helper&) = delete;
  ~helper() { stop(SIGKILL); }
  void stop(int sig) {
    if (pid <= 0) return;
    ::kill(pid, sig);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
};

// A client of the test's own, to look into streams and publish.
struct client {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  explicit client(const std::string& url) {
    EXPECT_EQ(natsConnection_ConnectTo(&nc, url.c_str()), NATS_OK);
    EXPECT_EQ(natsConnection_JetStream(&js, nc, nullptr), NATS_OK);
  }
  ~client() {
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
  }
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  std::uint64_t messages(const std::string& stream) {
    jsStreamInfo* si = nullptr;
    if (js_GetStreamInfo(&si, js, stream.c_str(), nullptr, nullptr) != NATS_OK) return 0;
    const auto n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
  }
  struct message {
    std::string id, stream, type;
    cleave::json payload;
  };
  std::vector<message> all(const std::string& stream) {
    std::vector<message> out;
    const auto n = messages(stream);
    for (std::uint64_t seq = 1; seq <= n; ++seq) {
      natsMsg* m = nullptr;
      if (js_GetMsg(&m, js, stream.c_str(), seq, nullptr, nullptr) != NATS_OK) {
        ADD_FAILURE() << "message " << seq << " missing";
        continue;
      }
      const char *id = "", *s = "", *type = "";
      natsMsgHeader_Get(m, "Nats-Msg-Id", &id);
      natsMsgHeader_Get(m, "Cleave-Stream", &s);
      natsMsgHeader_Get(m, "Cleave-Type", &type);
      out.push_back({id, s, type,
                     cleave::json::parse(std::string(
                         natsMsg_GetData(m), static_cast<std::size_t>(natsMsg_GetDataLength(m))))});
      natsMsg_Destroy(m);
    }
    return out;
  }
  void add_stream(const std::string& name, const std::string& subjects) {
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    const char* list[] = {subjects.c_str()};
    cfg.Name = name.c_str();
    cfg.Subjects = list;
    cfg.SubjectsLen = 1;
    jsStreamInfo* si = nullptr;
    ASSERT_EQ(js_AddStream(&si, js, &cfg, nullptr, nullptr), NATS_OK);
    jsStreamInfo_Destroy(si);
  }
  void publish(const std::string& subject, const std::string& id, const std::string& body) {
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = id.c_str();
    jsPubAck* ack = nullptr;
    ASSERT_EQ(js_Publish(&ack, js, subject.c_str(), body.data(), static_cast<int>(body.size()), &po,
                         nullptr),
              NATS_OK);
    jsPubAck_Destroy(ack);
  }
};

struct nats_fixture : testing::Test {
  cleave::testing::temp_dir dir;
  cleave::testing::nats_server server;
  std::string database = dir.file("app.db");

  std::unique_ptr<cleave::app> make_app() {
    cleave::app_config config;
    config.database = database;
    config.run_projector = false;
    config.log_level = "error";
    auto a = std::make_unique<cleave::app>(config);
    nats_test::install(*a, server.url());
    a->migrate();
    return a;
  }

  // Sends t.append to streams s0..s7 in turn, numbering each stream's events from 1, until
  // `stop`; returns how many it sent.
  static std::size_t write_until(cleave::app& a, const std::atomic<bool>& stop,
                                 std::map<std::string, std::int64_t>& next) {
    std::size_t sent = 0;
    while (!stop) {
      const std::string stream = "s" + std::to_string(sent % 8);
      const nats_test::append c{stream, ++next[stream]};
      EXPECT_TRUE(a.commands().send(c));
      ++sent;
    }
    return sent;
  }

  // The stream holds each event of the log once, and each log stream's events in order.
  void expect_relayed_once_in_order(cleave::app& a, std::size_t events) {
    client c(server.url());
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (c.messages("EVENTS") < events && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(50ms);
    const auto got = c.all("EVENTS");
    ASSERT_EQ(got.size(), events);
    std::set<std::string> ids;
    for (const auto& e : a.store().read_events({}, events + 10))
      ids.insert(cleave::nats::message_id(e));
    std::set<std::string> seen;
    std::map<std::string, std::int64_t> last;
    for (const auto& m : got) {
      EXPECT_TRUE(seen.insert(m.id).second) << "twice: " << m.id;
      EXPECT_TRUE(ids.contains(m.id)) << "not in the log: " << m.id;
      EXPECT_EQ(m.type, "t.appended");
      const auto n = m.payload["n"].get<std::int64_t>();
      EXPECT_EQ(n, last[m.stream] + 1) << "stream " << m.stream << " out of order";
      last[m.stream] = n;
    }
    EXPECT_EQ(seen, ids);
  }
};

TEST_F(nats_fixture, relay_publishes_each_event_once_in_order_through_kill9) {
  auto a = make_app();
  std::atomic<bool> stop{false};
  std::map<std::string, std::int64_t> next;
  std::size_t sent = 0;
  std::thread writer([&] { sent = write_until(*a, stop, next); });
  std::mt19937 rng(7);
  for (int kill = 0; kill < 22; ++kill) {
    helper relay(database, server.url(), {"relay"});
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + rng() % 250));
    // The first relay publishes before it dies, however slowly it starts (a sanitizer build on
    // a busy machine), so that the killed ones are known to have got somewhere.
    for (const auto until = std::chrono::steady_clock::now() + 20s;
         kill == 0 && client(server.url()).messages("EVENTS") == 0 &&
         std::chrono::steady_clock::now() < until;)
      std::this_thread::sleep_for(50ms);
    relay.stop(SIGKILL);
    // Now and then the next relay comes after the server's duplicate window has passed.
    if (kill % 4 == 3) std::this_thread::sleep_for(1200ms);
  }
  stop = true;
  writer.join();
  ASSERT_GT(sent, 500u);
  // The killed relays got somewhere, and the last one did not finish the job before it died.
  const auto relayed = client(server.url()).messages("EVENTS");
  EXPECT_GT(relayed, 0u);
  helper relay(database, server.url(), {"relay"});
  expect_relayed_once_in_order(*a, sent);
  relay.stop(SIGTERM);
}

TEST_F(nats_fixture, relay_waits_for_the_broker_and_loses_nothing) {
  auto a = make_app();
  a->projections().start({"relay"});
  std::map<std::string, std::int64_t> next;
  std::atomic<bool> stop{false};
  std::size_t sent = 0;
  std::thread writer([&] { sent = write_until(*a, stop, next); });
  std::this_thread::sleep_for(500ms);
  server.stop(SIGKILL);  // the broker dies mid-stream
  std::this_thread::sleep_for(1500ms);
  // Meanwhile the relay is behind, and says so.
  const auto status = a->projections().status("nats_relay");
  EXPECT_GT(status.lag_events, 0u);
  server.start();
  std::this_thread::sleep_for(500ms);
  stop = true;
  writer.join();
  expect_relayed_once_in_order(*a, sent);
  EXPECT_EQ(a->projections().status("nats_relay").lag_events, 0u);
  a->projections().stop();
}

TEST_F(nats_fixture, relay_skips_what_the_stream_holds_past_the_duplicate_window) {
  auto a = make_app();
  for (int i = 1; i <= 30; ++i) ASSERT_TRUE(a->commands().send(nats_test::append{"s0", i}));
  // A relay published the first 20 and died before its checkpoint moved...
  const auto events = a->store().read_events({}, 100);
  auto first = cleave::nats::relay(nats_test::relay_options(server.url()));
  first.sink_handler()(std::span(events).first(20));
  std::this_thread::sleep_for(1500ms);  // ...and the next one comes after the server forgot ids
  a->projections().catch_up();
  expect_relayed_once_in_order(*a, 30);
}

TEST_F(nats_fixture, relay_refuses_a_stream_another_publisher_writes_to) {
  auto a = make_app();
  client c(server.url());
  c.add_stream("EVENTS", "ev.>");
  c.publish("ev.foreign", "foreign-1", "{}");
  ASSERT_TRUE(a->commands().send(nats_test::append{"s0", 1}));
  EXPECT_THROW(a->projections().catch_up(), cleave::error_exception);
  EXPECT_EQ(c.messages("EVENTS"), 1u);  // nothing published beside a stranger's message
  EXPECT_EQ(a->projections().status("nats_relay").lag_events, 1u);
}

TEST_F(nats_fixture, inbox_gives_a_redelivered_message_one_effect) {
  auto a = make_app();
  client c(server.url());
  c.add_stream("ORDERS", "orders.>");
  for (int i = 0; i < 50; ++i)
    c.publish("orders.take", "o-" + std::to_string(i),
              cleave::json{{"id", "o" + std::to_string(i)}, {"n", i}}.dump());
  // The first ten ran before a crash that came before their acknowledgement.
  for (int i = 0; i < 10; ++i) {
    cleave::request_meta meta;
    meta.command_id = "@nats ORDERS/o-" + std::to_string(i);
    ASSERT_TRUE(a->commands().send(nats_test::take{"o" + std::to_string(i), i}, meta));
  }
  cleave::nats::inbox in(*a, nats_test::inbox_options(server.url()));
  EXPECT_EQ(in.run(true), 50u);
  const auto events = a->store().read_events({}, 1000);
  std::map<std::string, int> per_id;
  for (const auto& e : events) ++per_id[e.stream];
  EXPECT_EQ(per_id.size(), 50u);
  for (const auto& [id, n] : per_id) EXPECT_EQ(n, 1) << id;
  EXPECT_TRUE(in.dead_letters().empty());
  EXPECT_EQ(in.run(true), 0u);  // all acknowledged
}

TEST_F(nats_fixture, inbox_has_one_effect_per_message_through_kill9) {
  auto a = make_app();
  client c(server.url());
  c.add_stream("ORDERS", "orders.>");
  // Messages keep coming while inbox processes are killed: each dies in the middle of work.
  std::atomic<bool> stop{false};
  std::size_t total = 0;
  std::thread publisher([&] {
    client p(server.url());
    while (!stop) {
      p.publish("orders.take", "k-" + std::to_string(total),
                cleave::json{{"id", "k" + std::to_string(total)}, {"n", total}}.dump());
      ++total;
      std::this_thread::sleep_for(1ms);
    }
  });
  std::mt19937 rng(11);
  for (int kill = 0; kill < 22; ++kill) {
    helper in(database, server.url(), {"inbox", "run"});
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 150));
    in.stop(SIGKILL);
  }
  stop = true;
  publisher.join();
  EXPECT_GT(a->store().read_events({}, total + 10).size(), 0u);  // the killed ones did work
  {
    cleave::nats::inbox in(*a, nats_test::inbox_options(server.url()));
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (a->store().read_events({}, total + 10).size() < total &&
           std::chrono::steady_clock::now() < until)
      in.run(true);
  }
  std::map<std::string, int> per_id;
  for (const auto& e : a->store().read_events({}, total * 2)) ++per_id[e.stream];
  EXPECT_EQ(per_id.size(), total);
  for (const auto& [id, n] : per_id) EXPECT_EQ(n, 1) << id;
}

TEST_F(nats_fixture, refused_messages_are_parked_and_replayed) {
  cleave::app_config config;
  config.database = database;
  config.run_projector = false;
  config.log_level = "error";
  cleave::app a(config);
  std::atomic<bool> blocked{true};
  a.commands().add(
      [&](const nats_test::take& t, cleave::write_context& tx) -> cleave::result<void> {
        if (blocked) return cleave::rejected("blocked for now");
        tx.emit("take-" + t.id, nats_test::taken{t.id, t.n});
        return {};
      });
  a.migrate();
  client c(server.url());
  c.add_stream("ORDERS", "orders.>");
  c.publish("orders.take", "r-1", R"({"id":"r1","n":1})");
  c.publish("orders.unknown", "r-2", R"({"id":"r2","n":2})");
  c.publish("orders.take", "r-3", "not json");
  cleave::nats::inbox in(a, nats_test::inbox_options(server.url()));
  EXPECT_EQ(in.run(true), 3u);
  auto parked = in.dead_letters();
  ASSERT_EQ(parked.size(), 3u);
  std::map<std::string, std::string> why;
  for (const auto& d : parked) why[d.message_id] = d.error;
  EXPECT_EQ(why["r-1"], "blocked for now");
  EXPECT_NE(why["r-2"].find("no route for subject 'orders.unknown'"), std::string::npos);
  EXPECT_FALSE(why["r-3"].empty());
  EXPECT_EQ(in.replay_dead_letters(), 0u);  // still refused: counted, kept
  for (const auto& d : in.dead_letters()) {
    if (d.message_id == "r-1") {
      EXPECT_EQ(d.replays, 1);
    }
  }
  blocked = false;
  EXPECT_EQ(in.replay_dead_letters(), 1u);  // r-1 now runs (as replay 2); the others cannot
  EXPECT_EQ(in.dead_letters().size(), 2u);
  EXPECT_EQ(a.store().read_events({}, 10).size(), 1u);
  EXPECT_EQ(in.run(true), 0u);  // nothing was left unacknowledged
}

}  // namespace

namespace {

TEST_F(nats_fixture, the_admin_api_shows_and_replays_an_inboxs_dead_letters) {
  cleave::app_config config;
  config.database = database;
  config.run_projector = false;
  config.log_level = "error";
  config.listen = "127.0.0.1:0";
  cleave::app a(config);
  nats_test::install(a, server.url());
  a.migrate();
  client c(server.url());
  c.add_stream("ORDERS", "orders.>");
  c.publish("orders.take", "neg-1", R"({"id":"n1","n":-1})");
  cleave::nats::inbox in(a, nats_test::inbox_options(server.url()));
  EXPECT_EQ(in.run(true), 1u);
  cleave::http::server http(a);
  http.start();
  const auto listed = cleave::testing::http(http.port(), "GET", "/admin/inboxes");
  ASSERT_EQ(listed.status, 200) << listed.body;
  const auto body = cleave::json::parse(listed.body);
  ASSERT_EQ(body["inboxes"].size(), 1u);
  EXPECT_EQ(body["inboxes"][0]["name"], "ORDERS:cleave_inbox");
  ASSERT_EQ(body["inboxes"][0]["dead_letters"].size(), 1u);
  EXPECT_EQ(body["inboxes"][0]["dead_letters"][0]["message_id"], "neg-1");
  EXPECT_EQ(body["inboxes"][0]["dead_letters"][0]["error"], "n must not be negative");
  const auto replayed =
      cleave::testing::http(http.port(), "POST", "/admin/inboxes/ORDERS:cleave_inbox/replay");
  ASSERT_EQ(replayed.status, 200) << replayed.body;
  EXPECT_EQ(cleave::json::parse(replayed.body)["still_parked"], 1);  // refused again
  EXPECT_EQ(cleave::testing::http(http.port(), "POST", "/admin/inboxes/nope/replay").status, 404);
  EXPECT_EQ(
      cleave::testing::http(http.port(), "GET", "/admin/inboxes/ORDERS:cleave_inbox/replay").status,
      405);
  http.stop();
}

}  // namespace
