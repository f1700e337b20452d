// The process kit on a manager of its own: given events, then what it sent and scheduled, with a
// clock the test moves; refusals the test asks for reach the manager's on_rejected handler.

#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <cleave/testing/process_kit.hpp>

namespace {

using namespace std::chrono_literals;

struct close_tab {
  std::string id;
};
CLEAVE_COMMAND(close_tab, "kit.close_tab", id)
struct tab_opened {
  std::string id;
};
CLEAVE_EVENT(tab_opened, "kit.tab_opened", id)
struct tab_closed {
  std::string id;
};
CLEAVE_EVENT(tab_closed, "kit.tab_closed", id)

struct reminder {
  std::string id;
  std::string refused;
};
CLEAVE_RECORD(reminder, id, refused)

// Closes a tab left open for ten minutes.
cleave::process_manager<reminder> idle_tabs() {
  cleave::process_manager<reminder> m{"idle_tabs"};
  m.on(&tab_opened::id,
       [](const tab_opened& e, reminder& s, cleave::process_context& p) {
         s.id = e.id;
         p.schedule(10min, close_tab{e.id}, e.id);
       })
      .on(&tab_closed::id,
          [](const tab_closed& e, reminder&, cleave::process_context& p) {
            p.cancel_schedule(e.id);
            p.complete();
          })
      .on_rejected<close_tab>([](const close_tab&, const cleave::error& why, reminder& s,
                                 cleave::process_context&) { s.refused = why.message; });
  return m;
}

TEST(process_kit, a_deadline_fires_when_the_clock_reaches_it) {
  cleave::testing::process_kit kit{idle_tabs()};
  kit.given("t1", tab_opened{"t1"});
  auto v = kit.then_scheduled(std::vector{close_tab{"t1"}});
  EXPECT_TRUE(v) << v.why;
  v = kit.then_sent(std::vector<close_tab>{});
  EXPECT_TRUE(v) << v.why;
  kit.advance(9min);
  v = kit.then_sent(std::vector<close_tab>{});
  EXPECT_TRUE(v) << v.why;
  kit.advance(1min);
  v = kit.then_sent(std::vector{close_tab{"t1"}});
  EXPECT_TRUE(v) << v.why;
  EXPECT_TRUE(kit.scheduled().empty());
  EXPECT_EQ(kit.state("t1")["id"], "t1");
}

TEST(process_kit, a_completed_instance_cancels_its_deadline) {
  cleave::testing::process_kit kit{idle_tabs()};
  kit.given("t2", tab_opened{"t2"}, tab_closed{"t2"});
  EXPECT_TRUE(kit.scheduled().empty());
  EXPECT_TRUE(kit.state("t2").is_null());
  kit.advance(1h);
  EXPECT_TRUE(kit.sent().empty());
}

TEST(process_kit, a_refusal_reaches_the_manager) {
  cleave::testing::process_kit kit{idle_tabs()};
  kit.refuse<close_tab>(cleave::error{cleave::errc::rejected, "closed already", {}});
  kit.given("t3", tab_opened{"t3"});
  kit.advance(10min);
  EXPECT_TRUE(kit.sent().empty());
  EXPECT_TRUE(kit.scheduled().empty());
  EXPECT_EQ(kit.state("t3")["refused"], "closed already");
}

TEST(process_kit, a_verdict_says_what_differed) {
  cleave::testing::process_kit kit{idle_tabs()};
  kit.given("t4", tab_opened{"t4"});
  const auto v = kit.then_scheduled(std::vector{close_tab{"t5"}});
  EXPECT_FALSE(v);
  EXPECT_NE(v.why.find("expected scheduled [{\"id\":\"t5\"}], got [{\"id\":\"t4\"}]"),
            std::string::npos)
      << v.why;
}

}  // namespace
