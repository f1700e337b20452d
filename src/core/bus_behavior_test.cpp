#include <cleave/core/bus.hpp>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "bus_fixture.hpp"

// What a command's transaction does: commit, rollback, errors, retries, isolation; and the
// idempotency keys that let a command's outcome be remembered.

namespace {

using namespace bus_tests;

TEST(command_bus, success_commits_state_and_events_in_one_transaction) {
  recording_source store;
  cleave::command_bus commands(&store);
  commands.add(open);
  auto done = commands.send(bank::open_account{"a1", 10});
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(done->position.to_string(), "0.1.0");
  EXPECT_THAT(store.log,
              testing::ElementsAre("begin write",
                                   "exec insert into accounts(id, balance) values ($1, $2) with 2",
                                   R"(append bank.account_opened {"id":"a1"})", "commit"));
}

TEST(command_bus, a_rejection_rolls_back_and_returns_the_rule) {
  recording_source store;
  cleave::command_bus commands(&store);
  commands.add(open);
  auto done = commands.send(bank::open_account{"a1", -5});
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().category, errc::rejected);
  EXPECT_EQ(done.error().message, "an account cannot open overdrawn");
  EXPECT_THAT(store.log, testing::ElementsAre("begin write", "rollback"));
}

TEST(command_bus, an_exception_rolls_back_and_becomes_an_internal_error_without_details) {
  recording_source store;
  cleave::command_bus commands(&store);
  commands.add([](const bank::close_account&, cleave::write_context& ctx) -> cleave::result<void> {
    ctx.exec("delete from accounts");
    throw std::runtime_error("secret connection string");
  });
  cleave::request_meta meta;
  meta.correlation_id = "req-7";
  auto done = commands.send(bank::close_account{"a1"}, meta);
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().category, errc::internal);
  EXPECT_THAT(done.error().message, testing::Not(HasSubstr("secret")));
  EXPECT_THAT(done.error().message, HasSubstr("req-7"));
  EXPECT_EQ(store.log.back(), "rollback");
}

TEST(command_bus, an_error_exception_keeps_its_category) {
  cleave::command_bus commands;
  commands.add([](const bank::close_account&) -> cleave::result<void> {
    throw cleave::error_exception({errc::conflict, "version moved", {}});
  });
  auto done = commands.send(bank::close_account{"a1"});
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().category, errc::conflict);
}

TEST(command_bus, sql_without_a_store_is_unavailable_and_says_why) {
  cleave::command_bus commands;
  commands.add(open);
  auto done = commands.send(bank::open_account{"a1", 1});
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().category, errc::unavailable);
  EXPECT_THAT(done.error().message, HasSubstr("no store is configured"));
}

TEST(command_bus, a_transient_failure_runs_the_whole_command_again) {
  recording_source store;
  store.transient_commits = 2;
  cleave::command_bus commands{&store};
  int runs = 0;
  commands.add([&](const bank::open_account& c, cleave::write_context& ctx) {
    ++runs;
    return open(c, ctx);
  });
  auto done = commands.send(bank::open_account{"a1", 5});
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(done->value, 5);
  EXPECT_EQ(runs, 3);
  EXPECT_EQ(std::count(store.log.begin(), store.log.end(), "begin write"), 3);
}

TEST(command_bus, transient_failures_become_a_conflict_after_ten_attempts) {
  recording_source store;
  store.transient_commits = 100;
  cleave::command_bus commands{&store};
  commands.add(open);
  const auto start = cleave::clock::now();
  auto done = commands.send(bank::open_account{"a1", 5});
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().category, errc::conflict);
  EXPECT_EQ(done.error().message, "a concurrent command won");
  EXPECT_EQ(store.transient_commits, 90);
  // Pauses of at least 1, 2, 4, 8, 16 and then 32 ms between the ten attempts.
  EXPECT_GE(cleave::clock::now() - start, std::chrono::milliseconds(159));
}

TEST(command_bus, retries_stop_at_the_deadline) {
  recording_source store;
  store.transient_commits = 100;
  cleave::command_bus commands{&store};
  commands.add(open);
  cleave::request_meta meta;
  meta.deadline = cleave::clock::now() + std::chrono::milliseconds(2);
  auto done = commands.send(bank::open_account{"a1", 5}, meta);
  ASSERT_FALSE(done);
  // Out of time rather than out of attempts: a timeout, saying what it retried after.
  EXPECT_EQ(done.error().category, errc::timeout);
  EXPECT_THAT(done.error().message, testing::HasSubstr("a concurrent command won"));
  EXPECT_GE(store.transient_commits, 97);  // one or two attempts, not ten
}

TEST(command_bus, commands_run_serializable_unless_their_type_opts_down) {
  recording_source store;
  cleave::command_bus commands{&store};
  commands.add(open);
  commands.add(
      [](const bank::audit&, cleave::write_context&) -> cleave::result<void> { return {}; });
  ASSERT_TRUE(commands.send(bank::open_account{"a1", 5}));
  ASSERT_TRUE(commands.send_json("bank.audit", json{{"line", "x"}}));
  EXPECT_THAT(store.levels, testing::ElementsAre(cleave::isolation::serializable,
                                                 cleave::isolation::read_committed));
}

TEST(idempotency_keys, a_key_is_scoped_to_its_principal_and_checked) {
  EXPECT_EQ(cleave::command_id_for({}, "k-1").value(), "k-1");
  const auto ann = cleave::command_id_for({"ann", {}}, "k-1").value();
  const auto bob = cleave::command_id_for({"bob", {}}, "k-1").value();
  EXPECT_NE(ann, bob);
  EXPECT_NE(ann, "k-1");
  // A subject that looks like a subject and part of a key does not meet another's key.
  EXPECT_NE(cleave::command_id_for({"a", {}}, "b:c").value(),
            cleave::command_id_for({"a:b", {}}, "c").value());
  for (const std::string& bad : {std::string(), std::string("a b"), std::string(256, 'k'),
                                 std::string("tab\there"), std::string("caf\xc3\xa9")}) {
    auto r = cleave::command_id_for({}, bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().category, errc::validation);
  }
  EXPECT_TRUE(cleave::command_id_for({}, std::string(255, 'k')));
}

TEST(idempotency_keys, a_stored_outcome_keeps_its_fingerprint_and_old_records_still_read) {
  cleave::remembered_outcome o;
  o.failure = cleave::error{errc::rejected, "no", {{"x", "bad"}}};
  o.fingerprint = "00ff";
  o.correlation_id = "c-1";
  auto back = cleave::outcome_from_json(cleave::outcome_to_json(o));
  ASSERT_TRUE(back) << back.error().describe();
  EXPECT_EQ(back->fingerprint, "00ff");
  EXPECT_EQ(back->correlation_id, "c-1");
  EXPECT_EQ(back->failure->fields, o.failure->fields);
  auto old = cleave::outcome_from_json(json{{"response", 5}});
  ASSERT_TRUE(old);
  EXPECT_EQ(old->response, 5);
  EXPECT_TRUE(old->fingerprint.empty());  // matches any payload: recorded before fingerprints
  EXPECT_EQ(cleave::errc_from_string(to_string(errc::idempotency_key_reused)),
            errc::idempotency_key_reused);
}

}  // namespace
