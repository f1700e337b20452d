#include <cleave/postgres/store.hpp>

#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "postgres_backend.hpp"
#include "store_conformance.hpp"

namespace conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(postgres, store_conformance, cleave::testing::postgres_backend);
}  // namespace conformance

namespace {

struct isolation_in_use {
  using response = std::string;
};
CLEAVE_COMMAND(isolation_in_use, "pgtest.isolation_in_use")

struct isolation_in_use_loosely {
  using response = std::string;
  static constexpr auto isolation = cleave::isolation::read_committed;
};
CLEAVE_COMMAND(isolation_in_use_loosely, "pgtest.isolation_in_use_loosely")

cleave::result<std::string> current_isolation(cleave::write_context& tx) {
  return tx.one<std::string>("select current_setting('transaction_isolation')");
}

TEST(postgres_store, commands_run_serializable_unless_their_type_opts_down) {
  cleave::testing::postgres_backend backend;
  auto db = backend.open();
  cleave::command_bus commands{db.get()};
  commands.add(
      [](const isolation_in_use&, cleave::write_context& tx) { return current_isolation(tx); });
  commands.add([](const isolation_in_use_loosely&, cleave::write_context& tx) {
    return current_isolation(tx);
  });
  EXPECT_EQ(commands.send(isolation_in_use{}).value().value, "serializable");
  EXPECT_EQ(commands.send(isolation_in_use_loosely{}).value().value, "read committed");
}

TEST(postgres_store, a_wrong_url_is_unavailable_and_says_why) {
  try {
    cleave::postgres::store db{{.url = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"}};
    ADD_FAILURE() << "connected to nothing";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, cleave::errc::unavailable);
    EXPECT_THAT(e.error().message, testing::HasSubstr("connecting to PostgreSQL"));
  }
}

TEST(postgres_store, position_tokens_carry_the_transaction_and_the_commit_lsn) {
  cleave::testing::postgres_backend backend;
  auto db = backend.open();
  db->migrate("app", conformance::schema);
  cleave::command_bus commands{db.get()};
  commands.add(conformance::register_customer_handler);
  auto a = commands.send(conformance::register_customer{"c1", "Ada"});
  auto b = commands.send(conformance::register_customer{"c2", "Grace"});
  ASSERT_TRUE(a && b);
  EXPECT_GT(a->position.transaction(), 0u);
  EXPECT_GT(a->position.lsn(), 0u);
  EXPECT_LT(a->position, b->position);
  EXPECT_LE(a->position.lsn(), b->position.lsn());
  EXPECT_EQ(cleave::position_token::parse(b->position.to_string()).value().lsn(),
            b->position.lsn());
}

}  // namespace

// ---- a command's statements queued and sent together (pipeline mode) ----

struct pipelined : testing::Test {
  cleave::testing::postgres_backend backend;
  // One connection: whatever a transaction leaves on it, the next one meets.
  cleave::postgres::store db{{.url = backend.database.url(), .pool_size = 1}};
  cleave::command_bus commands{&db};
  pipelined() {
    db.migrate("app", conformance::schema);
    commands.add(conformance::register_customer_handler);
  }
  std::int64_t count(std::string_view table) {
    cleave::read_scope tx(db, {});
    std::int64_t n = 0;
    tx->query(fmt::format("select count(*) from {}", table), {},
              [&](const cleave::row_view& r) { n = std::get<std::int64_t>(r.get(0)); });
    return n;
  }
};

// A failed statement among many queued (more than a pipeline's sync holds), then a rollback: the
// connection goes back to the pool outside any transaction, whatever the count.
TEST_F(pipelined, a_rollback_after_a_failed_queued_statement_leaves_the_connection_clean) {
  ASSERT_TRUE(commands.send(conformance::register_customer{"c1", "Ada"}));
  for (const int fillers : {5, 996, 997, 998, 999, 1999}) {
    {
      cleave::write_scope tx(db, {});
      cleave::write_context ctx(&*tx, cleave::detail::no_meta);
      try {
        ctx.exec("insert into customers(id, name) values ('c1', 'again')");
        for (int i = 0; i < fillers; ++i) ctx.exec("select 1");
      } catch (const cleave::error_exception& e) {
        EXPECT_EQ(e.error().category, cleave::errc::conflict) << fillers;
      }
    }  // rolled back
    EXPECT_TRUE(commands.send(conformance::register_customer{fmt::format("f{}", fillers), "B"}))
        << fillers;
  }
  EXPECT_EQ(count("customers"), 7);
}

// The server ended the pooled connection while it lay idle (a restart, an administrator): the
// next command gets a fresh one, and a definite answer.
TEST_F(pipelined, a_pooled_connection_the_server_closed_is_replaced_before_use) {
  ASSERT_TRUE(commands.send(conformance::register_customer{"c1", "Ada"}));
  cleave::testing::admin(backend.database.url(),
                         "select pg_terminate_backend(pid) from pg_stat_activity where pid <> "
                         "pg_backend_pid() and datname = current_database() and backend_type = "
                         "'client backend'");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto done = commands.send(conformance::register_customer{"c2", "Grace"});
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_GT(done->position.position(), 0u);
  EXPECT_EQ(count("customers"), 2);
}

// Rolling back to a savepoint drops what came after it, keeps what came before (its events'
// positions in the token too), and does not hide an earlier statement's failure.
TEST_F(pipelined, rolling_back_to_a_savepoint_keeps_what_came_before_it) {
  {
    auto& tx = db.begin_write({});
    cleave::write_context ctx(&tx, cleave::detail::no_meta);
    ctx.emit("s", conformance::customer_registered{"s", "kept"});
    ctx.exec("savepoint a");
    ctx.emit("s", conformance::customer_registered{"s", "dropped"});
    ctx.exec("insert into customers(id, name) values ('x', 'x')");
    ctx.exec("insert into customers(id, name) values ('x', 'twice')");  // fails: rolled back
    ctx.exec("rollback to savepoint a");
    const auto token = tx.commit();
    EXPECT_GT(token.position(), 0u);
    EXPECT_GT(token.transaction(), 0u);
  }
  const auto log = db.read_events({}, 10);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].payload.value()["name"], "kept");
  EXPECT_EQ(count("customers"), 0);

  auto& tx = db.begin_write({});
  cleave::write_context ctx(&tx, cleave::detail::no_meta);
  bool ended = false;
  try {
    ctx.exec("insert into customers(id, name) values ('y', 'y')");
    ctx.exec("insert into customers(id, name) values ('y', 'twice')");  // before the savepoint
    ctx.exec("savepoint b");
    ctx.exec("rollback to savepoint b");
    ended = true;
    tx.commit();
    ADD_FAILURE() << "a failure before the savepoint was hidden";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, cleave::errc::conflict);
    if (!ended) tx.rollback();
  }
  EXPECT_EQ(count("customers"), 0);
}
