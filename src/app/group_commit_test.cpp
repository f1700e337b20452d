// An application with inline projections and group commit at once: the two wrappers stack, and
// each keeps its guarantee — a command's view rows change in its own transaction (with it or not
// at all), and commands that overlap share commits.

#include <cleave/app/app.hpp>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "temp_dir.hpp"

namespace grouped {

struct add_note {
  std::string id;
  bool fail_after_emit = false;  // the handler emits, then refuses: nothing of it may stay
};
CLEAVE_COMMAND(add_note, "grouped.add_note", id, fail_after_emit)

struct note_added {
  std::string id;
};
CLEAVE_EVENT(note_added, "grouped.note_added", id)

constexpr std::int64_t max_notes = 50;

constexpr cleave::migration schema[] = {{1, "notes", "create table notes(id text primary key)"}};

// A rule checked by reading: at most max_notes notes.
cleave::result<void> add(const add_note& c, cleave::write_context& tx) {
  if (tx.one<std::int64_t>("select count(*) from notes").value_or(0) >= max_notes)
    return cleave::rejected("the notebook is full");
  tx.exec("insert into notes(id) values ($1)", c.id);
  tx.emit(c.id, note_added{c.id});
  if (c.fail_after_emit) return cleave::rejected("changed my mind");
  return {};
}

cleave::projection note_view() {
  cleave::projection p{"note_view"};
  p.inline_()
      .schema("create table {view}(id text primary key)")
      .on([](const note_added& e, cleave::view_context& v) {
        v.exec("insert into {view}(id) values ($1)", e.id);
      });
  return p;
}

std::int64_t count(cleave::app& app, std::string_view sql) {
  cleave::read_scope tx(app.store(), cleave::detail::no_meta);
  cleave::read_context ctx(&*tx, cleave::detail::no_meta);
  return ctx.one<std::int64_t>(sql).value_or(-1);
}

// An application on a file in `dir`, with group commit and without the projector's worker.
cleave::app_config grouped_config(const cleave::testing::temp_dir& dir) {
  cleave::app_config cfg;
  cfg.database = dir.file("app.db");
  cfg.run_projector = false;
  cfg.group_commit = true;
  return cfg;
}

TEST(app_group_commit, inline_views_change_with_their_commands_and_commands_share_commits) {
  cleave::testing::temp_dir dir;
  cleave::app app{grouped_config(dir)};
  app.add_migrations("grouped", schema);
  app.commands().add(add);
  app.add_projection(note_view());
  app.migrate();
  ASSERT_NE(app.group_commits(), nullptr);

  constexpr int threads = 8, each = 20;
  std::atomic<int> accepted{0}, full{0}, other{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t)
    clients.emplace_back([&, t] {
      for (int i = 0; i < each; ++i) {
        const bool bad = i % 5 == 0;
        auto r =
            app.commands().send(add_note{fmt::format("{}{}-{}", bad ? "bad-" : "", t, i), bad});
        if (r)
          ++accepted;
        else if (r.error().message == "the notebook is full")
          ++full;
        else if (r.error().message != "changed my mind")
          ++other;
      }
    });
  for (auto& c : clients) c.join();

  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(accepted.load(), max_notes);  // the rule held across every group
  EXPECT_GT(full.load(), 0);
  // Exactly the accepted commands' rows, view rows and events: a refused member's insert, event
  // and inline view row went back with its savepoint, in a transaction others committed.
  EXPECT_EQ(count(app, "select count(*) from notes"), max_notes);
  EXPECT_EQ(count(app, "select count(*) from note_view"), max_notes);
  EXPECT_EQ(count(app, "select count(*) from notes where id like 'bad-%'"), 0);
  EXPECT_EQ(count(app, "select count(*) from cleave_events"), max_notes);
  EXPECT_EQ(count(app, "select count(*) from note_view v join notes n on n.id = v.id"), max_notes);
  // Every accepted command went through the group commit.
  EXPECT_EQ(app.group_commits()->commands_committed(), static_cast<std::uint64_t>(max_notes));
  EXPECT_LE(app.group_commits()->groups_committed(), app.group_commits()->commands_committed());
}

struct write_note {
  std::string id;
  std::string mode;  // "ok", "refuse" (after its insert and event), "throw" (likewise)
};
CLEAVE_COMMAND(write_note, "grouped.write_note", id, mode)

cleave::result<void> write(const write_note& c, cleave::write_context& tx) {
  tx.exec("insert into notes(id) values ($1)", c.id);
  tx.emit(c.id, note_added{c.id});
  if (c.mode == "refuse") return cleave::rejected("refused on purpose");
  if (c.mode == "throw") throw std::runtime_error("thrown on purpose");
  return {};
}

// Commands sent at once are run one after another by whichever caller holds the lane: each
// still gets its own outcome, and only the accepted ones' effects stay.
TEST(app_group_commit, each_command_of_a_shared_commit_gets_its_own_outcome) {
  cleave::testing::temp_dir dir;
  cleave::app app{grouped_config(dir)};
  app.add_migrations("grouped", schema);
  app.commands().add(write);
  app.migrate();
  ASSERT_TRUE(app.commands().send(write_note{"taken", "ok"}));

  // Threads 2k and 2k + 1 send the same accepted commands under the same idempotency keys.
  constexpr int threads = 8, rounds = 12;
  std::atomic<int> accepted{0}, refused{0}, thrown{0}, duplicate{0}, other{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t)
    clients.emplace_back([&, t] {
      for (int i = 0; i < rounds; ++i) {
        cleave::request_meta meta;
        switch (i % 4) {
          case 0: {
            meta.command_id = fmt::format("key-{}-{}", t / 2, i);
            auto r = app.commands().send(write_note{fmt::format("{}-{}", t / 2, i), "ok"}, meta);
            (r ? accepted : other)++;
            break;
          }
          case 1: {
            auto r = app.commands().send(write_note{fmt::format("refused-{}-{}", t, i), "refuse"});
            (!r && r.error().message == "refused on purpose" ? refused : other)++;
            break;
          }
          case 2: {
            auto r = app.commands().send(write_note{fmt::format("thrown-{}-{}", t, i), "throw"});
            (!r && r.error().category == cleave::errc::internal ? thrown : other)++;
            break;
          }
          default: {
            auto r = app.commands().send(write_note{"taken", "ok"});
            (!r && r.error().category == cleave::errc::conflict ? duplicate : other)++;
          }
        }
      }
    });
  for (auto& c : clients) c.join();

  constexpr int each = threads * rounds / 4;
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(accepted.load(), each);
  EXPECT_EQ(refused.load(), each);
  EXPECT_EQ(thrown.load(), each);
  EXPECT_EQ(duplicate.load(), each);
  // One effect per idempotency key, and nothing of the refused, thrown or duplicate commands.
  EXPECT_EQ(count(app, "select count(*) from notes"), 1 + each / 2);
  EXPECT_EQ(
      count(app, "select count(*) from notes where id like 'refused-%' or id like 'thrown-%'"), 0);
  EXPECT_EQ(count(app, "select count(*) from cleave_events"), 1 + each / 2);
  // Accepted commands and replays kept their work in a group; the others left nothing in one.
  EXPECT_EQ(app.group_commits()->commands_committed(), static_cast<std::uint64_t>(1 + each));
}

TEST(app_group_commit, is_off_unless_configured) {
  cleave::app_config cfg;
  cfg.database = ":memory:";
  cfg.run_projector = false;
  cleave::app app{cfg};
  EXPECT_EQ(app.group_commits(), nullptr);
}

}  // namespace grouped
