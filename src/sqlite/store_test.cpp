#include <cleave/sqlite/store.hpp>

#include "sqlite_backend.hpp"
#include "store_conformance.hpp"

namespace {

struct sqlite_memory_backend {
  // Each open() is a separate in-memory database, so only single-handle tests apply.
  std::unique_ptr<cleave::store> open() const {
    return std::make_unique<cleave::sqlite::store>(cleave::sqlite::options{.path = ":memory:"});
  }
};

}  // namespace

namespace conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(sqlite, store_conformance, cleave::testing::sqlite_backend);
}  // namespace conformance

namespace {

TEST(sqlite_memory, an_in_memory_database_serves_commands_and_queries) {
  auto db = sqlite_memory_backend{}.open();
  db->migrate("app", conformance::schema);
  cleave::command_bus commands{db.get()};
  cleave::query_bus queries{db.get()};
  commands.add(conformance::register_customer_handler);
  queries.add(conformance::customer_by_id_handler);
  ASSERT_TRUE(commands.send(conformance::register_customer{"c1", "Ada"}));
  EXPECT_EQ(queries.ask(conformance::customer_by_id{"c1"}).value().name, "Ada");
  EXPECT_EQ(db->read_events({}, 10).size(), 1u);
}

TEST(sqlite_store, creates_the_folder_of_its_file) {
  cleave::testing::temp_dir dir;
  cleave::sqlite::store db{{.path = dir.file("a/b/c.db")}};
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "a/b/c.db"));
}

}  // namespace
