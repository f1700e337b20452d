#include <cleave/core/bus.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace bank {

struct open_account {
  std::string id;
  std::int64_t opening_balance = 0;
  using response = std::int64_t;  // the balance after opening
};
CLEAVE_COMMAND(open_account, "bank.open_account", id, opening_balance)

struct close_account {
  std::string id;
};
CLEAVE_COMMAND(close_account, "bank.close_account", id)

struct never_handled {
  std::string id;
};
CLEAVE_COMMAND(never_handled, "bank.never_handled", id)

struct account_opened {
  std::string id;
};
CLEAVE_EVENT(account_opened, "bank.account_opened", id)

struct account_view {
  std::string id;
  std::int64_t balance = 0;
};
CLEAVE_RECORD(account_view, id, balance)

struct account_by_id {
  std::string id;
  using response = account_view;
};
CLEAVE_QUERY(account_by_id, "bank.account_by_id", id)

struct count_accounts {
  using response = std::int64_t;
};
CLEAVE_QUERY(count_accounts, "bank.count_accounts")

}  // namespace bank

namespace {

using cleave::errc;
using cleave::json;
using testing::HasSubstr;

// A session source that records what the buses do with it; rows for queries come from `rows`.
class recording_source final : public cleave::session_source {
 public:
  struct row final : cleave::row_view {
    std::vector<std::pair<std::string, cleave::sql_value>> cells;
    std::size_t size() const override { return cells.size(); }
    cleave::sql_value get(std::size_t c) const override { return cells[c].second; }
    std::string_view column_name(std::size_t c) const override { return cells[c].first; }
  };

  struct tx final : cleave::write_transaction, cleave::read_transaction {
    recording_source* owner = nullptr;
    void query(std::string_view sql, std::span<const cleave::sql_value>,
               cleave::row_callback on_row) override {
      owner->log.push_back("query " + std::string(sql));
      for (const auto& r : owner->rows) on_row(r);
    }
    std::int64_t exec(std::string_view sql, std::span<const cleave::sql_value> params) override {
      owner->log.push_back("exec " + std::string(sql) + " with " + std::to_string(params.size()));
      return 1;
    }
    void script(std::string_view sql) override {
      owner->log.push_back("script " + std::string(sql));
    }
    std::uint64_t append(const cleave::pending_event& e) override {
      owner->log.push_back("append " + std::string(e.type) + " " + e.payload.dump());
      return 1;
    }
    cleave::position_token commit() override {
      owner->log.push_back("commit");
      if (owner->transient_commits > 0) {
        --owner->transient_commits;
        throw cleave::transient_error({errc::conflict, "a concurrent command won", {}});
      }
      return cleave::position_token(0, static_cast<std::uint64_t>(++owner->position));
    }
    void rollback() noexcept override { owner->log.push_back("rollback"); }
    std::optional<cleave::remembered_outcome> remembered() override { return std::nullopt; }
    void remember(const cleave::remembered_outcome&) override { owner->log.push_back("remember"); }
    void rebind(const cleave::request_meta&) override {}
    cleave::position_token position_so_far() override { return {}; }
    void finish() noexcept override { owner->log.push_back("finish"); }
  };

  cleave::write_transaction& begin_write(const cleave::request_meta&,
                                         cleave::isolation level) override {
    log.push_back("begin write");
    levels.push_back(level);
    return tx_;
  }
  cleave::read_transaction& begin_read(const cleave::request_meta&,
                                       const cleave::consistency&) override {
    log.push_back("begin read");
    return tx_;
  }

  std::vector<std::string> log;
  std::vector<row> rows;
  int position = 0;
  int transient_commits = 0;  // commits that fail as a serialization failure would
  std::vector<cleave::isolation> levels;

 private:
  tx tx_ = make_tx();
  tx make_tx() {
    tx t;
    t.owner = this;
    return t;
  }
};

cleave::result<std::int64_t> open(const bank::open_account& c, cleave::write_context& ctx) {
  if (c.opening_balance < 0) return cleave::rejected("an account cannot open overdrawn");
  ctx.exec("insert into accounts(id, balance) values ($1, $2)", c.id, c.opening_balance);
  ctx.emit(c.id, bank::account_opened{c.id});
  return c.opening_balance;
}

TEST(command_bus, typed_send_reaches_a_free_function_and_returns_its_response) {
  cleave::command_bus commands;
  commands.add([](const bank::open_account& c) -> cleave::result<std::int64_t> {
    return c.opening_balance * 2;
  });
  auto done = commands.send(bank::open_account{"a1", 21});
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(done->value, 42);
  EXPECT_TRUE(done->position.empty());  // no store, no position
}

TEST(command_bus, handlers_may_be_stateful_function_objects) {
  struct closer {
    std::shared_ptr<int> closed = std::make_shared<int>(0);
    cleave::result<void> operator()(const bank::close_account&, cleave::write_context&) {
      ++*closed;
      return {};
    }
  } handler;
  auto closed = handler.closed;
  cleave::command_bus commands;
  commands.add(handler);
  ASSERT_TRUE(commands.send(bank::close_account{"a1"}));
  ASSERT_TRUE(commands.send(bank::close_account{"a2"}));
  EXPECT_EQ(*closed, 2);
}

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
  EXPECT_EQ(done.error().category, errc::conflict);
  EXPECT_GE(store.transient_commits, 97);  // one or two attempts, not ten
}

struct audit {
  std::string line;
  static constexpr auto isolation = cleave::isolation::read_committed;
};
CLEAVE_COMMAND(audit, "bank.audit", line)

TEST(command_bus, commands_run_serializable_unless_their_type_opts_down) {
  recording_source store;
  cleave::command_bus commands{&store};
  commands.add(open);
  commands.add([](const audit&, cleave::write_context&) -> cleave::result<void> { return {}; });
  ASSERT_TRUE(commands.send(bank::open_account{"a1", 5}));
  ASSERT_TRUE(commands.send_json("bank.audit", json{{"line", "x"}}));
  EXPECT_THAT(store.levels, testing::ElementsAre(cleave::isolation::serializable,
                                                 cleave::isolation::read_committed));
}

TEST(command_bus, a_second_handler_for_a_type_is_refused_naming_it) {
  cleave::command_bus commands;
  commands.add(open);
  try {
    commands.add(open);
    FAIL() << "a duplicate handler was accepted";
  } catch (const std::logic_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'bank.open_account' (open_account) is already registered"));
  }
}

TEST(command_bus, send_without_a_handler_names_the_type) {
  cleave::command_bus commands;
  auto done = commands.send(bank::never_handled{"x"});
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().category, errc::not_found);
  EXPECT_THAT(done.error().message, HasSubstr("'bank.never_handled' (never_handled)"));
}

TEST(command_bus, start_up_check_lists_every_declared_command_without_a_handler) {
  cleave::command_bus commands;
  commands.add(open);
  commands.add([](const audit&) -> cleave::result<void> { return {}; });
  std::vector<std::string> missing;
  for (const auto* info : commands.unhandled()) missing.emplace_back(info->wire_name);
  EXPECT_THAT(missing, testing::UnorderedElementsAre("bank.close_account", "bank.never_handled"));
  auto check = commands.check_complete();
  ASSERT_FALSE(check);
  EXPECT_THAT(check.error().message, HasSubstr("2 declared commands without a handler"));
  EXPECT_THAT(check.error().message, HasSubstr("'bank.never_handled' (never_handled)"));
}

TEST(command_bus, dispatch_by_name_decodes_strictly_and_encodes_the_response) {
  recording_source store;
  cleave::command_bus commands(&store);
  commands.add(open);
  auto done = commands.send_json("bank.open_account", json{{"id", "a1"}, {"opening_balance", 7}});
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(done->result, 7);
  EXPECT_EQ(done->position.to_string(), "0.1.0");

  store.log.clear();
  auto bad = commands.send_json("bank.open_account", json{{"id", "a1"}, {"opening_balance", 7.5}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().category, errc::validation);
  EXPECT_EQ(bad.error().fields.at(0).path, "opening_balance");
  EXPECT_TRUE(store.log.empty()) << "a message that failed to decode reached the store";

  auto unknown = commands.send_json("bank.rob", json::object());
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().category, errc::not_found);
  EXPECT_EQ(unknown.error().message, "unknown command 'bank.rob'");
}

TEST(command_bus, concurrent_sends_are_safe) {
  std::atomic<int> calls{0};
  cleave::command_bus commands;
  commands.use<cleave::timing>();
  commands.add([&](const bank::close_account&) -> cleave::result<void> {
    calls.fetch_add(1);
    return {};
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) ASSERT_TRUE(commands.send(bank::close_account{"a"}));
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(calls.load(), 4000);
}

TEST(query_bus, ask_maps_rows_onto_the_declared_response) {
  recording_source store;
  recording_source::row r;
  r.cells = {{"balance", std::int64_t{12}}, {"id", std::string_view("a1")}};
  store.rows.push_back(r);
  cleave::query_bus queries(&store);
  queries.add([](const bank::account_by_id& q, const cleave::read_context& db) {
    return db.one<bank::account_view>("select id, balance from accounts where id = $1", q.id);
  });
  auto view = queries.ask(bank::account_by_id{"a1"});
  ASSERT_TRUE(view) << view.error().describe();
  EXPECT_EQ(view->id, "a1");
  EXPECT_EQ(view->balance, 12);
  EXPECT_THAT(store.log,
              testing::ElementsAre(
                  "begin read", "query select id, balance from accounts where id = $1", "finish"));
}

TEST(query_bus, one_without_rows_is_not_found_and_many_is_empty) {
  recording_source store;
  cleave::query_bus queries(&store);
  queries.add([](const bank::account_by_id& q, const cleave::read_context& db) {
    return db.one<bank::account_view>("select id, balance from accounts where id = $1", q.id);
  });
  queries.add([](const bank::count_accounts&,
                 const cleave::read_context& db) -> cleave::result<std::int64_t> {
    return static_cast<std::int64_t>(db.many<bank::account_view>("select * from accounts").size());
  });
  auto view = queries.ask(bank::account_by_id{"zz"});
  ASSERT_FALSE(view);
  EXPECT_EQ(view.error().category, errc::not_found);
  EXPECT_EQ(queries.ask(bank::count_accounts{}).value(), 0);
}

TEST(query_bus, a_row_that_does_not_fit_the_shape_is_an_internal_error_naming_the_column) {
  recording_source store;
  recording_source::row r;
  r.cells = {{"id", std::string_view("a1")}, {"balance", std::string_view("lots")}};
  store.rows.push_back(r);
  cleave::query_bus queries(&store);
  queries.add([](const bank::account_by_id&, const cleave::read_context& db) {
    return db.one<bank::account_view>("select id, balance from accounts");
  });
  auto view = queries.ask(bank::account_by_id{"a1"});
  ASSERT_FALSE(view);
  EXPECT_EQ(view.error().category, errc::internal);
  EXPECT_EQ(view.error().message, "column 'balance' is not an integer");
  EXPECT_EQ(store.log.back(), "finish");
}

TEST(query_bus, context_carries_correlation_principal_and_deadline) {
  cleave::query_bus queries;
  queries.add([](const bank::count_accounts&,
                 const cleave::read_context& ctx) -> cleave::result<std::int64_t> {
    if (ctx.correlation_id() != "c-1" || !ctx.principal().has_role("teller"))
      return cleave::fail(errc::forbidden, "not a teller");
    return ctx.deadline() == cleave::clock::time_point::max() ? 0 : 1;
  });
  cleave::request_meta meta;
  meta.correlation_id = "c-1";
  meta.principal = {"ada", {"teller"}};
  meta.deadline = cleave::clock::now() + std::chrono::seconds(1);
  EXPECT_EQ(queries.ask(bank::count_accounts{}, meta).value(), 1);
  EXPECT_EQ(queries.ask(bank::count_accounts{}).error().category, errc::forbidden);
}

TEST(query_bus, dispatch_by_name_returns_json) {
  cleave::query_bus queries;
  queries.add([](const bank::account_by_id& q) -> cleave::result<bank::account_view> {
    return bank::account_view{q.id, 3};
  });
  auto r = queries.ask_json("bank.account_by_id", json{{"id", "a1"}});
  ASSERT_TRUE(r) << r.error().describe();
  EXPECT_EQ(r->result, (json{{"id", "a1"}, {"balance", 3}}));
  auto unknown = queries.ask_json("bank.open_account", json{{"id", "a1"}});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().message,
            "unknown query 'bank.open_account'");  // a command, not a query
}

TEST(buses, commands_and_queries_stay_on_their_own_bus) {
  cleave::command_bus commands;
  cleave::query_bus queries;
  commands.add(open);
  EXPECT_TRUE(commands.handles("bank.open_account"));
  EXPECT_FALSE(queries.handles("bank.open_account"));
  for (const auto* info : queries.unhandled()) EXPECT_EQ(info->kind, cleave::message_kind::query);
}

}  // namespace

namespace {

TEST(position_token, text_form_round_trips_and_orders_by_transaction_then_position) {
  const cleave::position_token a(1, 0x20, 7), b(2, 1), c(2, 3);
  EXPECT_EQ(a.to_string(), "1.20.7");
  EXPECT_EQ(cleave::position_token::parse("1.20.7").value().lsn(), 7u);
  EXPECT_EQ(cleave::position_token::parse(a.to_string()).value(), a);
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_TRUE(cleave::position_token{}.empty());
  EXPECT_EQ(cleave::position_token{}.to_string(), "");
  EXPECT_TRUE(cleave::position_token::parse("").value().empty());
  for (const char* bad : {"1.2", "1.2.3.4", "x.1.2", "1..2", "1.2.3 ", "-1.2.3"}) {
    auto r = cleave::position_token::parse(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().category, cleave::errc::validation);
    EXPECT_THAT(r.error().message, HasSubstr("malformed position token"));
  }
}

}  // namespace

namespace {

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
