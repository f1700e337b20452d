#include <cleave/sqlite/store.hpp>

#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>
#include <cleave/store/upcasting.hpp>

#include "temp_dir.hpp"

namespace shop {

struct register_customer {
  std::string id;
  std::string name;
};
CLEAVE_COMMAND(register_customer, "shop.register_customer", id, name)

struct customer_registered {
  std::string id;
  std::string name;
  std::string tier = "standard";
};
CLEAVE_EVENT(customer_registered, "shop.customer_registered", id, name, tier)

struct customer {
  std::string id;
  std::string name;
  std::optional<std::string> email;
};
CLEAVE_RECORD(customer, id, name, email)

struct customer_by_id {
  std::string id;
  using response = customer;
};
CLEAVE_QUERY(customer_by_id, "shop.customer_by_id", id)

struct wipe_customers {
  using response = std::int64_t;
};
CLEAVE_QUERY(wipe_customers, "shop.wipe_customers")

}  // namespace shop

namespace {

using cleave::errc;
using testing::HasSubstr;

constexpr cleave::migration shop_schema[] = {
    {1, "customers", "create table customers(id text primary key, name text not null)"},
    {2, "customer email", "alter table customers add column email text"},
};

cleave::result<void> register_customer(const shop::register_customer& c,
                                       cleave::write_context& tx) {
  if (c.name.empty()) return cleave::rejected("name must not be empty");
  tx.exec("insert into customers(id, name) values ($1, $2)", c.id, c.name);
  tx.emit(c.id, shop::customer_registered{c.id, c.name});
  if (c.name == "boom") throw std::runtime_error("failed after writing");
  return {};
}

cleave::result<shop::customer> customer_by_id(const shop::customer_by_id& q,
                                              const cleave::read_context& db) {
  return db.one<shop::customer>("select id, name, email from customers where id = $1", q.id);
}

struct sqlite_store : testing::Test {
  cleave::testing::temp_dir dir;
  cleave::sqlite::store db{{.path = dir.file("var/shop.db")}};
  cleave::command_bus commands{&db};
  cleave::query_bus queries{&db};

  void SetUp() override {
    db.migrate("shop", shop_schema);
    commands.add(register_customer);
    queries.add(customer_by_id);
  }
  std::int64_t count(std::string_view table) {
    std::int64_t n = -1;
    auto& tx = db.begin_read({});
    const std::string sql = "select count(*) from " + std::string(table);
    tx.query(sql, {}, [&](const cleave::row_view& r) { n = std::get<std::int64_t>(r.get(0)); });
    tx.finish();
    return n;
  }
};

TEST_F(sqlite_store, a_command_commits_its_state_and_its_event_together) {
  cleave::request_meta meta;
  meta.correlation_id = "req-1";
  meta.command_id = "cmd-1";
  auto done = commands.send(shop::register_customer{"c1", "Ada"}, meta);
  ASSERT_TRUE(done) << done.error().describe();

  auto card = queries.ask(shop::customer_by_id{"c1"});
  ASSERT_TRUE(card) << card.error().describe();
  EXPECT_EQ(card->name, "Ada");
  EXPECT_FALSE(card->email);

  auto events = db.read_events({}, 10);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, "shop.customer_registered");
  EXPECT_EQ(events[0].stream, "c1");
  EXPECT_EQ(events[0].stream_version, 1u);
  EXPECT_EQ(events[0].correlation_id, "req-1");
  EXPECT_EQ(events[0].command_id, "cmd-1");
  EXPECT_EQ(events[0].payload["name"], "Ada");
  EXPECT_EQ(events[0].position, done->position);
  EXPECT_EQ(db.head(), done->position);
}

TEST_F(sqlite_store, a_rejected_or_failing_command_leaves_nothing_behind) {
  auto refused = commands.send(shop::register_customer{"c1", ""});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().category, errc::rejected);
  auto failed = commands.send(shop::register_customer{"c2", "boom"});
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().category, errc::internal);
  EXPECT_EQ(count("customers"), 0);
  EXPECT_EQ(count("cleave_events"), 0);
  EXPECT_TRUE(db.head().empty());
  // The writer is free again.
  EXPECT_TRUE(commands.send(shop::register_customer{"c3", "Grace"}));
}

TEST_F(sqlite_store, a_unique_violation_is_a_conflict) {
  ASSERT_TRUE(commands.send(shop::register_customer{"c1", "Ada"}));
  auto again = commands.send(shop::register_customer{"c1", "Ada"});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().category, errc::conflict);
  EXPECT_EQ(count("cleave_events"), 1);
}

TEST_F(sqlite_store, a_query_cannot_write_even_through_raw_sql) {
  ASSERT_TRUE(commands.send(shop::register_customer{"c1", "Ada"}));
  queries.add([](const shop::wipe_customers&,
                 const cleave::read_context& ctx) -> cleave::result<std::int64_t> {
    return static_cast<std::int64_t>(
        ctx.many<std::string>("delete from customers returning id").size());
  });
  auto r = queries.ask(shop::wipe_customers{});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().category, errc::forbidden);
  EXPECT_EQ(count("customers"), 1);
}

TEST_F(sqlite_store, placeholders_bind_by_number_in_any_order) {
  ASSERT_TRUE(commands.send(shop::register_customer{"c1", "Ada"}));
  auto& tx = db.begin_read({});
  std::string name;
  const cleave::sql_value params[] = {std::string_view("Ada"), std::string_view("c1")};
  tx.query("select name from customers where id = $2 and name = $1", params,
           [&](const cleave::row_view& r) { name = std::get<std::string_view>(r.get(0)); });
  tx.finish();
  EXPECT_EQ(name, "Ada");
}

TEST_F(sqlite_store, expected_stream_version_guards_concurrent_changes) {
  auto& w = db.begin_write({});
  cleave::write_context ctx(&w, cleave::detail::no_meta);
  EXPECT_EQ(ctx.emit("s1", shop::customer_registered{"s1", "a"}, 0), 1u);
  EXPECT_EQ(ctx.emit("s1", shop::customer_registered{"s1", "b"}, 1), 2u);
  EXPECT_EQ(ctx.emit("s2", shop::customer_registered{"s2", "c"}), 1u);
  try {
    ctx.emit("s1", shop::customer_registered{"s1", "late"}, 1);
    ADD_FAILURE() << "a stale expected version was accepted";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, errc::conflict);
    EXPECT_THAT(e.error().message, HasSubstr("stream 's1' is at version 2, expected 1"));
  }
  w.commit();
  EXPECT_EQ(count("cleave_events"), 3);
}

TEST_F(sqlite_store, migrations_apply_once_in_order_and_report_failures) {
  EXPECT_EQ(db.applied_migrations("shop"), (std::vector<int>{1, 2}));
  db.migrate("shop", shop_schema);  // again: nothing to do
  EXPECT_EQ(db.applied_migrations("shop"), (std::vector<int>{1, 2}));
  EXPECT_EQ(db.applied_migrations("cleave"), (std::vector<int>{1, 2}));  // cleave's own tables

  constexpr cleave::migration broken[] = {{3, "typo", "create tabel nope(x)"}};
  try {
    db.migrate("shop", broken);
    ADD_FAILURE() << "a broken migration was accepted";
  } catch (const cleave::error_exception& e) {
    EXPECT_THAT(e.error().message, HasSubstr("migration 3 'typo' of shop"));
  }
  EXPECT_EQ(db.applied_migrations("shop"), (std::vector<int>{1, 2}));
  EXPECT_TRUE(commands.send(shop::register_customer{"c1", "Ada"}));  // the writer is free again
}

TEST(sqlite_migrations, two_processes_migrating_at_once_apply_each_step_once) {
  cleave::testing::temp_dir dir;
  const auto path = dir.file("shared.db");
  { cleave::sqlite::store create{{.path = path}}; }
  constexpr cleave::migration steps[] = {
      {1, "a", "create table a(x integer)"},
      {2, "b", "create table b(x integer)"},
      {3, "c", "insert into a values (1)"},
  };
  std::vector<std::thread> racers;
  for (int i = 0; i < 4; ++i)
    racers.emplace_back([&] {
      cleave::sqlite::store mine{{.path = path}};  // its own connections, as another process
      mine.migrate("app", steps);
    });
  for (auto& t : racers) t.join();
  cleave::sqlite::store check{{.path = path}};
  EXPECT_EQ(check.applied_migrations("app"), (std::vector<int>{1, 2, 3}));
  auto& tx = check.begin_read({});
  std::int64_t rows = 0;
  tx.query("select count(*) from a", {},
           [&](const cleave::row_view& r) { rows = std::get<std::int64_t>(r.get(0)); });
  tx.finish();
  EXPECT_EQ(rows, 1);
}

TEST(sqlite_memory, an_in_memory_database_serves_commands_and_queries) {
  cleave::sqlite::store db{{.path = ":memory:"}};
  db.migrate("shop", shop_schema);
  cleave::command_bus commands{&db};
  cleave::query_bus queries{&db};
  commands.add(register_customer);
  queries.add(customer_by_id);
  ASSERT_TRUE(commands.send(shop::register_customer{"c1", "Ada"}));
  EXPECT_EQ(queries.ask(shop::customer_by_id{"c1"}).value().name, "Ada");
  EXPECT_EQ(db.read_events({}, 10).size(), 1u);
}

TEST_F(sqlite_store, old_events_decode_with_defaults_and_upcasters) {
  // Written long ago: a renamed type, a member since dropped, no `tier`.
  {
    auto& w = db.begin_write({});
    const cleave::sql_value row[] = {
        std::string_view("c9"), std::string_view("shop.customer_signed_up"),
        std::string_view(R"({"id":"c9","full_name":"Old","legacy":1})")};
    w.exec(
        "insert into cleave_events(stream, stream_version, type, payload, recorded_at) "
        "values ($1, 1, $2, $3, 0)",
        row);
    w.commit();
  }
  cleave::upcasters rewrites;
  rewrites.add("shop.customer_signed_up", "shop.customer_registered", [](cleave::json& p) {
    p["name"] = p["full_name"];
    p.erase("full_name");
  });
  auto events = db.read_events({}, 10);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_FALSE(cleave::decode_event<shop::customer_registered>(events[0]));
  auto e = cleave::decode_event<shop::customer_registered>(events[0], &rewrites);
  ASSERT_TRUE(e) << e.error().describe();
  EXPECT_EQ(e->name, "Old");
  EXPECT_EQ(e->tier, "standard");
}

}  // namespace
