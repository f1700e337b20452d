#include <cleave/sqlite/store.hpp>

#include <sqlite3.h>

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

// The data version (what the HTTP server's answer cache trusts): the same across reads, new
// after every commit — the store's own, and another connection's that the store knows nothing
// of; none for ":memory:", whose data no other connection can change.
TEST(sqlite_store, the_data_version_changes_with_every_commit_of_any_connection_and_only_then) {
  EXPECT_FALSE(sqlite_memory_backend{}.open()->current_data_version());
  cleave::testing::temp_dir dir;
  const auto path = dir.file("versioned.db");
  cleave::sqlite::store db{{.path = path}};
  db.migrate("app", conformance::schema);
  cleave::command_bus commands{&db};
  cleave::query_bus queries{&db};
  commands.add(conformance::register_customer_handler);
  queries.add(conformance::customer_by_id_handler);
  ASSERT_TRUE(commands.send(conformance::register_customer{"c0", "Ada"}));
  const auto before = db.current_data_version();
  ASSERT_TRUE(before);
  ASSERT_TRUE(queries.ask(conformance::customer_by_id{"c0"}));
  (void)db.head();
  EXPECT_EQ(db.current_data_version(), before) << "a read changed it";
  std::optional<cleave::data_version> last = before;
  for (int i = 1; i <= 3; ++i) {
    ASSERT_TRUE(commands.send(conformance::register_customer{fmt::format("c{}", i), "x"}));
    const auto now = db.current_data_version();
    ASSERT_TRUE(now);
    EXPECT_NE(now, last) << "commit " << i << " left it as it was";
    last = now;
  }
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "update customers set name = 'Grace' where id = 'c0'", nullptr,
                         nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(other);
  EXPECT_NE(db.current_data_version(), last) << "another connection's commit went unseen";
  EXPECT_EQ(queries.ask(conformance::customer_by_id{"c0"}).value().name, "Grace");
}

TEST(sqlite_store, creates_the_folder_of_its_file) {
  cleave::testing::temp_dir dir;
  cleave::sqlite::store db{{.path = dir.file("a/b/c.db")}};
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "a/b/c.db"));
}

}  // namespace

namespace {

// Commits never wait for a WAL checkpoint (a thread of the store copies the WAL back), and the
// WAL does not grow without bound while commits go on without a pause: its size stays a small
// part of what was written (without checkpoints it would hold every page of every commit).
TEST(sqlite_store, the_wal_stays_bounded_while_commits_never_pause) {
  cleave::testing::temp_dir dir;
  const auto path = dir.file("busy.db");
  cleave::sqlite::store db{{.path = path, .sync = cleave::sqlite::durability::normal}};
  db.migrate("app", conformance::schema);
  cleave::command_bus commands{&db};
  commands.add(conformance::register_customer_handler);
  std::uintmax_t largest = 0;
  constexpr int commands_sent = 20000;
  for (int i = 0; i < commands_sent; ++i) {
    ASSERT_TRUE(commands.send(conformance::register_customer{fmt::format("c{}", i), "x"}));
    if (i % 500 == 0) largest = std::max(largest, std::filesystem::file_size(path + "-wal"));
  }
  // Each command writes a few pages (the row, its index, the event and its indexes): some
  // 300 MB for them all. A checkpoint every 1,000 pages keeps the WAL near 4 MB when the writer
  // pauses, within a few times that when it does not, and near its limit (64 MB) at worst, on a
  // machine too busy to give the checkpointer its turn.
  EXPECT_LT(largest, 96u << 20) << "the WAL grew to " << largest << " bytes";
  EXPECT_GT(largest, 0u);
}

}  // namespace
