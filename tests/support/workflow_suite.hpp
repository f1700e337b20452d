#pragma once
// Workflows on any backend (typed tests, label `workflow`): commands scheduled by handlers are
// sent once when due — late after a time with no process, never when cancelled, once however
// many senders race — and a process manager's commands leave with ids of its own and come back
// to it when refused.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <cleave/app/app.hpp>
#include <cleave/cleave.hpp>

namespace workflows {

struct open_tab {
  std::string id;
  std::int64_t close_in_ms = 0;  // 0: never by itself
};
CLEAVE_COMMAND(open_tab, "wf.open_tab", id, close_in_ms)
struct close_tab {
  std::string id;
};
CLEAVE_COMMAND(close_tab, "wf.close_tab", id)
struct keep_tab {
  std::string id;
};
CLEAVE_COMMAND(keep_tab, "wf.keep_tab", id)

// A command whose handler always throws (a bug): its schedule is tried again, never blocking.
struct break_tab {
  std::string id;
};
CLEAVE_COMMAND(break_tab, "wf.break_tab", id)
struct schedule_break {
  std::string id;
};
CLEAVE_COMMAND(schedule_break, "wf.schedule_break", id)
// Schedules the closing of a tab that may not exist yet.
struct schedule_close {
  std::string id;
};
CLEAVE_COMMAND(schedule_close, "wf.schedule_close", id)

struct tab_opened {
  std::string id;
};
CLEAVE_EVENT(tab_opened, "wf.tab_opened", id)
struct tab_closed {
  std::string id;
};
CLEAVE_EVENT(tab_closed, "wf.tab_closed", id)

inline constexpr cleave::migration schema[] = {
    {1, "tabs",
     "create table tabs(id text primary key, open bigint not null, closes bigint not null)"}};

inline cleave::result<void> on_open(const open_tab& c, cleave::write_context& tx) {
  tx.exec("insert into tabs(id, open, closes) values ($1, 1, 0)", c.id);
  tx.emit(c.id, tab_opened{c.id});
  if (c.close_in_ms > 0)
    tx.schedule(std::chrono::milliseconds(c.close_in_ms), close_tab{c.id}, "close:" + c.id);
  return {};
}

inline cleave::result<void> on_close(const close_tab& c, cleave::write_context& tx) {
  auto open = tx.one<std::int64_t>("select open from tabs where id = $1", c.id);
  if (!open) return cleave::not_found("no such tab");
  if (*open == 0) return cleave::rejected("the tab is closed already");
  tx.exec("update tabs set open = 0, closes = closes + 1 where id = $1", c.id);
  tx.emit(c.id, tab_closed{c.id});
  return {};
}

inline cleave::result<void> on_break(const break_tab&, cleave::write_context&) {
  throw std::runtime_error("a bug");
}

inline cleave::result<void> on_schedule_break(const schedule_break& c, cleave::write_context& tx) {
  tx.schedule(std::chrono::milliseconds(1), break_tab{c.id});
  return {};
}

inline cleave::result<void> on_schedule_close(const schedule_close& c, cleave::write_context& tx) {
  tx.schedule(std::chrono::milliseconds(1), close_tab{c.id});
  return {};
}

inline cleave::result<void> on_keep(const keep_tab& c, cleave::write_context& tx) {
  if (!tx.cancel_schedule("close:" + c.id)) return cleave::rejected("nothing to cancel");
  return {};
}

// The process manager of the tests: closes every tab opened (at once), and notes refusals.
struct watch_state {
  std::string id;
  std::string refused;
};
CLEAVE_RECORD(watch_state, id, refused)

inline cleave::process_manager<watch_state> tab_watch() {
  cleave::process_manager<watch_state> m{"tab_watch"};
  m.on(&tab_opened::id,
       [](const tab_opened& e, watch_state& s, cleave::process_context& p) {
         s.id = e.id;
         p.send(close_tab{e.id});
       })
      .on_rejected<close_tab>([](const close_tab&, const cleave::error& why, watch_state& s,
                                 cleave::process_context&) { s.refused = why.message; });
  return m;
}

template <class Backend>
struct scheduling : testing::Test {
  Backend backend;

  // An application on the test's database (another process's, as each call makes another).
  std::unique_ptr<cleave::app> make_app(bool run_projector, bool with_manager = false,
                                        std::map<std::string, std::string> roles = {}) {
    cleave::app_config config;
    config.roles = std::move(roles);
    config.database = backend.location();
    config.run_projector = run_projector;
    config.log_level = "warn";
    auto a = std::make_unique<cleave::app>(config);
    a->add_migrations("tabs", schema);
    a->commands().add(on_open);
    a->commands().add(on_close);
    a->commands().add(on_keep);
    a->commands().add(on_break);
    a->commands().add(on_schedule_break);
    a->commands().add(on_schedule_close);
    if (with_manager) a->add_process_manager(tab_watch());
    a->migrate();
    return a;
  }

  std::int64_t scalar(cleave::app& a, const std::string& sql) {
    cleave::read_scope tx(a.store(), cleave::detail::no_meta, cleave::strong());
    cleave::read_context ctx(&*tx, cleave::detail::no_meta);
    return ctx.one<std::int64_t>(sql).value_or(-1);
  }

  // Waits (up to 10 s) until `sql` returns `want`; returns what it returned last.
  std::int64_t wait_for(cleave::app& a, const std::string& sql, std::int64_t want) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    auto got = scalar(a, sql);
    while (got != want && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      got = scalar(a, sql);
    }
    return got;
  }
};

TYPED_TEST_SUITE_P(scheduling);

TYPED_TEST_P(scheduling, a_command_scheduled_by_a_handler_is_sent_once_when_due) {
  auto a = this->make_app(true);
  a->start_workers();
  ASSERT_TRUE(a->commands().send(open_tab{"t1", 300}));
  // Not before it is due.
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 't1'"), 0);
  ASSERT_EQ(a->schedules().list().size(), 1u);
  EXPECT_EQ(a->schedules().list()[0].key, "close:t1");
  EXPECT_EQ(this->wait_for(*a, "select closes from tabs where id = 't1'", 1), 1);
  EXPECT_EQ(this->wait_for(*a, "select count(*) from cleave_schedules", 0), 0);
  // Sent with the schedule's id as its command id.
  EXPECT_EQ(this->scalar(*a,
                         "select count(*) from cleave_events where type = 'wf.tab_closed' and "
                         "command_id is not null"),
            1);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 't1'"), 1);
}

TYPED_TEST_P(scheduling, a_cancelled_schedule_is_never_sent) {
  auto a = this->make_app(true);
  a->start_workers();
  ASSERT_TRUE(a->commands().send(open_tab{"t2", 200}));
  ASSERT_TRUE(a->commands().send(keep_tab{"t2"}));
  auto again = a->commands().send(keep_tab{"t2"});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().category, cleave::errc::rejected);
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 't2'"), 0);
  EXPECT_EQ(this->scalar(*a, "select count(*) from cleave_schedules"), 0);
}

TYPED_TEST_P(scheduling, a_schedule_due_while_no_process_runs_is_sent_when_one_comes_back) {
  {
    auto down = this->make_app(false);
    ASSERT_TRUE(down->commands().send(open_tab{"t3", 100}));
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    EXPECT_EQ(this->scalar(*down, "select closes from tabs where id = 't3'"), 0);
  }
  auto back = this->make_app(true);
  back->start_workers();
  EXPECT_EQ(this->wait_for(*back, "select closes from tabs where id = 't3'", 1), 1);
  EXPECT_EQ(this->wait_for(*back, "select count(*) from cleave_schedules", 0), 0);
}

// Senders that race — two processes' schedulers, each sending every due schedule, and one
// resending after a "crash" — apply each command once.
TYPED_TEST_P(scheduling, racing_and_resending_senders_apply_each_command_once) {
  auto first = this->make_app(false);
  auto second = this->make_app(false);
  constexpr int tabs = 40;
  for (int i = 0; i < tabs; ++i)
    ASSERT_TRUE(first->commands().send(open_tab{"r" + std::to_string(i), 1}));
  const auto due = first->schedules().list();
  ASSERT_EQ(due.size(), static_cast<std::size_t>(tabs));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::thread other([&] { (void)second->schedules().run_due(); });
  (void)first->schedules().run_due();
  other.join();
  // A sender that died after sending sends the same schedule again: the first outcome answers.
  cleave::request_meta again;
  again.command_id = cleave::scheduler::command_id_of(due[0].id);
  again.schedule_id = due[0].id;
  EXPECT_TRUE(
      first->commands().send_json(due[0].command, *cleave::parse_json(due[0].payload), again));
  EXPECT_EQ(this->scalar(*first, "select count(*) from tabs where closes = 1"), tabs);
  EXPECT_EQ(this->scalar(*first, "select count(*) from tabs where closes <> 1"), 0);
  EXPECT_EQ(this->scalar(*first, "select count(*) from cleave_schedules"), 0);
}

TYPED_TEST_P(scheduling, a_process_manager_sends_with_its_own_ids_and_takes_refusals) {
  auto a = this->make_app(false, true);
  ASSERT_TRUE(a->commands().send(open_tab{"p1"}));
  // p2 is closed by hand before the manager's close reaches it: that one is refused.
  ASSERT_TRUE(a->commands().send(open_tab{"p2"}));
  ASSERT_TRUE(a->commands().send(close_tab{"p2"}));
  a->projections().catch_up();  // the manager's batch, then the scheduler's sends
  a->projections().catch_up();
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 'p1'"), 1);
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 'p2'"), 1);
  EXPECT_EQ(this->scalar(*a,
                         "select count(*) from cleave_events where type = 'wf.tab_closed' and "
                         "command_id like '@schedule tab_watch@%#0'"),
            1);
  EXPECT_EQ(this->scalar(*a, "select count(*) from cleave_schedules"), 0);
  EXPECT_EQ(this->scalar(*a,
                         "select count(*) from tab_watch where instance = 'p2' and state like "
                         "'%closed already%'"),
            1);
  // p1's close went through: its state holds no refusal.
  EXPECT_EQ(this->scalar(*a, "select count(*) from tab_watch where state like '%refused\":\"\"%'"),
            1);
  // Not rebuilt: that would send its commands again.
  EXPECT_THROW(a->projections().rebuild("tab_watch"), cleave::error_exception);
}

// A caller who learns a schedule's id and sends another command under it as its idempotency
// key (an anonymous HTTP caller's key is the command id) neither runs nor blocks the schedule.
TYPED_TEST_P(scheduling, a_caller_cannot_take_a_schedules_command_id) {
  auto a = this->make_app(false);
  ASSERT_TRUE(a->commands().send(open_tab{"f1", 1}));
  ASSERT_TRUE(a->commands().send(open_tab{"f2"}));
  const auto row = a->schedules().list().at(0);
  for (const auto& stolen : {row.id, cleave::scheduler::command_id_of(row.id)}) {
    auto key = cleave::command_id_for({}, stolen);
    if (!key) continue;  // not even a key a transport accepts
    cleave::request_meta meta;
    meta.command_id = *key;
    (void)a->commands().send(close_tab{"f2"}, meta);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  (void)a->schedules().run_due();
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 'f1'"), 1);
  EXPECT_EQ(this->scalar(*a, "select count(*) from cleave_schedules"), 0);
}

// A schedule whose command keeps failing is tried again with a growing pause and kept as failed
// in the end; it never holds back the schedules after it. A command refused for want of a role is
// kept as failed at once (not a business refusal: a setup to fix), and can be sent again.
TYPED_TEST_P(scheduling, failing_and_forbidden_schedules_never_hold_back_the_others) {
  auto a = this->make_app(false, false, {{"wf.close_tab", "closer"}});
  ASSERT_TRUE(a->commands().send(schedule_break{"b1"}));
  ASSERT_TRUE(a->commands().send(open_tab{"b2", 2}));
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  (void)a->schedules().run_due();
  const auto rows = a->schedules().list();
  ASSERT_EQ(rows.size(), 2u);
  for (const auto& r : rows) {
    if (r.command == "wf.break_tab") {
      EXPECT_EQ(r.state, "pending");
      EXPECT_EQ(r.attempts, 1);
      EXPECT_TRUE(r.last_error.has_value());
    } else {
      EXPECT_EQ(r.state, "failed");  // the scheduler ran it as the anonymous caller who opened it
      EXPECT_NE(r.last_error.value_or("").find("closer"), std::string::npos)
          << r.last_error.value_or("");
    }
  }
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 'b2'"), 0);
  const auto forbidden = std::find_if(rows.begin(), rows.end(),
                                      [](const auto& r) { return r.command == "wf.close_tab"; });
  EXPECT_TRUE(a->schedules().retry(forbidden->id));
  EXPECT_FALSE(a->schedules().retry(forbidden->id));  // pending now, not failed
  EXPECT_EQ(this->scalar(*a, "select count(*) from cleave_schedules where state = 'pending'"), 2);
}

// A refused schedule is kept as failed; once what it needed exists, `retry` runs it (under a
// fresh id: its refusal is remembered under the old one).
TYPED_TEST_P(scheduling, a_refused_schedule_runs_when_retried) {
  auto a = this->make_app(false);
  ASSERT_TRUE(a->commands().send(schedule_close{"ghost"}));
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  (void)a->schedules().run_due();
  auto rows = a->schedules().list();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].state, "failed");
  EXPECT_NE(rows[0].last_error.value_or("").find("no such tab"), std::string::npos);
  ASSERT_TRUE(a->commands().send(open_tab{"ghost"}));
  ASSERT_TRUE(a->schedules().retry(rows[0].id));
  (void)a->schedules().run_due();
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 'ghost'"), 1);
  EXPECT_EQ(this->scalar(*a, "select count(*) from cleave_schedules"), 0);
  EXPECT_FALSE(a->schedules().discard(rows[0].id));
}

// A process manager added to a running system reacts to what happens next, not to history.
TYPED_TEST_P(scheduling, a_process_manager_added_later_starts_at_the_logs_head) {
  {
    auto before = this->make_app(false);
    ASSERT_TRUE(before->commands().send(open_tab{"h1"}));
  }
  auto a = this->make_app(false, true);
  ASSERT_TRUE(a->commands().send(open_tab{"h2"}));
  a->projections().catch_up();
  a->projections().catch_up();
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 'h1'"), 0);
  EXPECT_EQ(this->scalar(*a, "select closes from tabs where id = 'h2'"), 1);
}

REGISTER_TYPED_TEST_SUITE_P(scheduling, a_command_scheduled_by_a_handler_is_sent_once_when_due,
                            a_cancelled_schedule_is_never_sent,
                            a_schedule_due_while_no_process_runs_is_sent_when_one_comes_back,
                            racing_and_resending_senders_apply_each_command_once,
                            a_process_manager_sends_with_its_own_ids_and_takes_refusals,
                            a_caller_cannot_take_a_schedules_command_id,
                            failing_and_forbidden_schedules_never_hold_back_the_others,
                            a_process_manager_added_later_starts_at_the_logs_head,
                            a_refused_schedule_runs_when_retried);

}  // namespace workflows
