#include <cleave/postgres/store.hpp>

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
