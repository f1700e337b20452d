// The shop with a NATS server (label `nats`): `shop relay` publishes its events to stream
// SHOP_EVENTS, and `shop inbox run` turns messages on shop_commands.* into its commands — each
// run as its own process, as a user would.

#include <gtest/gtest.h>

#include <csignal>
#include <thread>

#include <nats/nats.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nats_server.hpp"
#include "shop.hpp"
#include "temp_dir.hpp"

namespace {

using namespace std::chrono_literals;

struct shop_process {
  pid_t pid = -1;
  shop_process(const std::string& database, const std::string& url, std::vector<std::string> args) {
    pid = fork();
    if (pid == 0) {
      setenv("CLEAVE_DATABASE", database.c_str(), 1);
      setenv("SHOP_NATS_URL", url.c_str(), 1);
      setenv("CLEAVE_LOG_LEVEL", "error", 1);
      setenv("SHOP_CONFIG", "/nonexistent/shop.json", 1);
      std::vector<char*> argv{const_cast<char*>(SHOP_BINARY)};
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(SHOP_BINARY, argv.data());
      _exit(127);
    }
  }
  shop_process(const shop_process&) = delete;
  shop_process& operator=(const shop_process&) = delete;
  ~shop_process() {
    ::kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
  }
};

std::uint64_t messages(jsCtx* js, const char* stream) {
  jsStreamInfo* si = nullptr;
  if (js_GetStreamInfo(&si, js, stream, nullptr, nullptr) != NATS_OK) return 0;
  const auto n = si->State.Msgs;
  jsStreamInfo_Destroy(si);
  return n;
}

TEST(shop_nats, the_shop_relays_its_events_and_takes_commands_from_its_inbox) {
  cleave::testing::temp_dir dir;
  cleave::testing::nats_server server;
  const auto database = dir.file("shop.db");
  cleave::app_config cfg;
  cfg.database = database;
  cfg.run_projector = false;
  cfg.log_level = "error";
  cleave::app shop_app(cfg);
  shop::install(shop_app);
  shop_app.migrate();
  shop::seed_demo_data(shop_app);

  shop_process relay(database, server.url(), {"relay"});
  shop_process inbox(database, server.url(), {"inbox", "run"});
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  ASSERT_EQ(natsConnection_ConnectTo(&nc, server.url().c_str()), NATS_OK);
  ASSERT_EQ(natsConnection_JetStream(&js, nc, nullptr), NATS_OK);

  // A command from outside: an order placed through the inbox's stream (made by the inbox).
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (messages(js, "SHOP_EVENTS") == 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(50ms);  // the seed data's events reach the relay's stream
  const auto seeded = messages(js, "SHOP_EVENTS");
  ASSERT_GT(seeded, 0u);
  const std::string order =
      R"({"order_id":"nats-1","customer_id":"ada","lines":[{"product_id":"mug","quantity":2}]})";
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MsgId = "order-nats-1";
  jsPubAck* ack = nullptr;
  natsStatus published = NATS_NO_RESPONDERS;
  while (published != NATS_OK && std::chrono::steady_clock::now() < until) {
    published = js_Publish(&ack, js, "shop_commands.place_order", order.data(),
                           static_cast<int>(order.size()), &po, nullptr);
    if (published != NATS_OK) std::this_thread::sleep_for(100ms);  // the stream is not made yet
  }
  ASSERT_EQ(published, NATS_OK);
  jsPubAck_Destroy(ack);

  // The order is placed once, and its event goes out through the relay.
  while (messages(js, "SHOP_EVENTS") == seeded && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(50ms);
  natsMsg* last = nullptr;
  ASSERT_EQ(
      js_GetLastMsg(&last, js, "SHOP_EVENTS", "shop_events.shop.order_placed", nullptr, nullptr),
      NATS_OK);
  const char* stream = nullptr;
  natsMsgHeader_Get(last, "Cleave-Stream", &stream);
  EXPECT_STREQ(stream, "nats-1");
  natsMsg_Destroy(last);
  std::size_t placed = 0;
  for (const auto& e : shop_app.store().read_events({}, 1000))
    if (e.type == "shop.order_placed") ++placed;
  EXPECT_EQ(placed, 1u);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

}  // namespace
