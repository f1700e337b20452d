// Reads from a real hot standby (pg_basebackup -R; label `replica`): at_least(token) is served by
// the standby once it has replayed the token's commit LSN, waits or goes to the primary when it
// has not, and lag is measured. Replay is paused on the standby to make it lag on purpose.

#include <chrono>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/cleave.hpp>
#include <cleave/postgres/store.hpp>

#include "pg_database.hpp"

namespace {

struct add_note {
  std::string id;
  std::string text;
};
CLEAVE_COMMAND(add_note, "replica.add_note", id, text)
struct note_added {
  std::string id;
};
CLEAVE_EVENT(note_added, "replica.note_added", id)
struct note_by_id {
  std::string id;
  using response = std::string;
};
CLEAVE_QUERY(note_by_id, "replica.note_by_id", id)

constexpr cleave::migration schema[] = {
    {1, "notes", "create table notes(id text primary key, text text not null)"}};

// Pauses WAL replay on the standby for the scope (replay is resumed however the test ends).
struct paused_replay {
  std::string standby;
  explicit paused_replay(std::string url) : standby(std::move(url)) {
    cleave::testing::admin(standby, "select pg_wal_replay_pause()");
  }
  ~paused_replay() { cleave::testing::admin(standby, "select pg_wal_replay_resume()"); }
};

struct replica_reads : testing::Test {
  cleave::testing::pg_database db;
  std::string standby = cleave::testing::with_database(cleave::testing::standby_url(), db.name());

  std::unique_ptr<cleave::postgres::store> open(bool fallback) {
    cleave::postgres::options o{.url = db.url()};
    o.replicas = {standby};
    o.replica_wait = std::chrono::milliseconds(300);
    o.replica_max_lag = std::chrono::milliseconds(250);
    o.replica_fallback_to_primary = fallback;
    // The database was just created on the primary: wait until the standby has it too.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      try {
        cleave::testing::admin(standby, "select 1");
        break;
      } catch (const std::exception&) {
        if (std::chrono::steady_clock::now() > until) throw;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    auto s = std::make_unique<cleave::postgres::store>(o);
    s->migrate("notes", schema);
    return s;
  }
};

void wire(cleave::command_bus& commands, cleave::query_bus& queries) {
  commands.add([](const add_note& c, cleave::write_context& tx) -> cleave::result<void> {
    tx.exec("insert into notes(id, text) values ($1, $2)", c.id, c.text);
    tx.emit(c.id, note_added{c.id});
    return {};
  });
  queries.add([](const note_by_id& q, const cleave::read_context& db) {
    return db.one<std::string>("select text from notes where id = $1", q.id);
  });
}

// A store and the buses wired to it.
struct wired_store {
  std::unique_ptr<cleave::postgres::store> db;
  cleave::command_bus commands{db.get()};
  cleave::query_bus queries{db.get()};
  explicit wired_store(std::unique_ptr<cleave::postgres::store> s) : db(std::move(s)) {
    wire(commands, queries);
  }
};

TEST_F(replica_reads, at_least_is_served_by_the_standby_once_it_has_replayed_the_commit) {
  wired_store w{open(true)};
  for (int i = 0; i < 20; ++i) {
    const std::string id = "n" + std::to_string(i);
    auto done = w.commands.send(add_note{id, "hello"});
    ASSERT_TRUE(done) << done.error().describe();
    ASSERT_GT(done->position.lsn(), 0u);
    cleave::request_meta meta;
    meta.consistency = cleave::at_least(done->position);
    auto seen = w.queries.ask(note_by_id{id}, meta);
    ASSERT_TRUE(seen) << seen.error().describe() << " (read your write " << i << ")";
    EXPECT_EQ(*seen, "hello");
  }
  EXPECT_EQ(w.db->replicas().at(0).reads, 20u) << "the standby served none of them";
  // strong always reads the primary.
  cleave::request_meta strong;
  strong.consistency = cleave::strong();
  ASSERT_TRUE(w.queries.ask(note_by_id{"n0"}, strong));
  EXPECT_EQ(w.db->replicas().at(0).reads, 20u);
}

TEST_F(replica_reads, a_retried_commands_token_is_served_by_the_standby_too) {
  wired_store w{open(true)};
  cleave::request_meta once;
  once.command_id = "retried-1";
  auto first = w.commands.send(add_note{"r1", "again"}, once);
  ASSERT_TRUE(first) << first.error().describe();
  // The retry gets the remembered outcome, with a token a standby can honour.
  auto retry = w.commands.send(add_note{"r1", "again"}, once);
  ASSERT_TRUE(retry) << retry.error().describe();
  EXPECT_EQ(retry->position.position(), first->position.position());
  ASSERT_GE(retry->position.lsn(), first->position.lsn());
  const auto before = w.db->replicas().at(0).reads;
  cleave::request_meta meta;
  meta.consistency = cleave::at_least(retry->position);
  auto seen = w.queries.ask(note_by_id{"r1"}, meta);
  ASSERT_TRUE(seen) << seen.error().describe();
  EXPECT_EQ(*seen, "again");
  EXPECT_EQ(w.db->replicas().at(0).reads, before + 1) << "the retry's read went to the primary";
}

TEST_F(replica_reads, a_commit_lsn_past_the_primarys_wal_is_refused_at_once) {
  wired_store w{open(true)};
  auto done = w.commands.send(add_note{"f1", "from the future"});
  ASSERT_TRUE(done) << done.error().describe();
  const auto p = done->position;
  cleave::request_meta meta;
  meta.consistency = cleave::at_least(
      cleave::position_token(p.transaction(), p.position(), p.lsn() + (std::uint64_t{1} << 40)));
  auto seen = w.queries.ask(note_by_id{"f1"}, meta);
  ASSERT_FALSE(seen) << "a token this store never issued was served";
  EXPECT_EQ(seen.error().category, cleave::errc::validation);
  EXPECT_THAT(seen.error().message, testing::HasSubstr("has not issued"));
}

TEST_F(replica_reads, a_lagging_standby_is_waited_for_then_left_for_the_primary_or_refused) {
  auto fallback = open(true);
  auto strict = open(false);
  cleave::command_bus commands{fallback.get()};
  cleave::query_bus to_primary{fallback.get()}, refused{strict.get()};
  wire(commands, to_primary);
  refused.add([](const note_by_id& q, const cleave::read_context& reader) {
    return reader.one<std::string>("select text from notes where id = $1", q.id);
  });
  paused_replay pause{cleave::testing::standby_url()};
  auto done = commands.send(add_note{"late", "written while the standby is paused"});
  ASSERT_TRUE(done);
  cleave::request_meta meta;
  meta.consistency = cleave::at_least(done->position);
  const auto before = fallback->replicas().at(0).reads;
  auto seen = to_primary.ask(note_by_id{"late"}, meta);
  ASSERT_TRUE(seen) << seen.error().describe();
  EXPECT_EQ(fallback->replicas().at(0).reads, before) << "a standby that lacks it served it";
  auto no = refused.ask(note_by_id{"late"}, meta);
  ASSERT_FALSE(no);
  EXPECT_EQ(no.error().category, cleave::errc::unavailable);
  EXPECT_THAT(no.error().message, testing::HasSubstr("no replica has replayed"));
  // Lag shows, and past the limit the standby is set aside for eventual reads too.
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  ASSERT_TRUE(commands.send(add_note{"later", "x"}));
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  const auto lag = fallback->replicas().at(0);
  EXPECT_GT(lag.lag_bytes, 0u);
  EXPECT_GT(lag.lag_seconds, 0.25);
  EXPECT_TRUE(lag.set_aside);
  const auto reads = lag.reads;
  ASSERT_TRUE(to_primary.ask(note_by_id{"later"}));
  EXPECT_EQ(fallback->replicas().at(0).reads, reads);
}

TEST_F(replica_reads, once_replay_resumes_the_standby_catches_up_and_serves_again) {
  wired_store w{open(false)};
  cleave::position_token last;
  {
    paused_replay pause{cleave::testing::standby_url()};
    last = w.commands.send(add_note{"p", "paused"}).value().position;
  }
  cleave::request_meta meta;
  meta.consistency = cleave::at_least(last);
  auto seen = w.queries.ask(note_by_id{"p"}, meta);  // waits (up to 300 ms) for the replay
  ASSERT_TRUE(seen) << seen.error().describe();
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (w.db->replicas().at(0).lag_bytes > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(w.db->replicas().at(0).lag_bytes, 0u);
  EXPECT_FALSE(w.db->replicas().at(0).set_aside);
}

}  // namespace
