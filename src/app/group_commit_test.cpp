// An application with inline projections and group commit at once: the two wrappers stack, and
// each keeps its guarantee — a command's view rows change in its own transaction (with it or not
// at all), and commands that overlap share commits.

#include <cleave/app/app.hpp>

#include <atomic>
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

TEST(app_group_commit, inline_views_change_with_their_commands_and_commands_share_commits) {
  cleave::testing::temp_dir dir;
  cleave::app_config cfg;
  cfg.database = dir.file("app.db");
  cfg.run_projector = false;
  cfg.group_commit = true;
  cleave::app app{cfg};
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

TEST(app_group_commit, is_off_unless_configured) {
  cleave::app_config cfg;
  cfg.database = ":memory:";
  cfg.run_projector = false;
  cleave::app app{cfg};
  EXPECT_EQ(app.group_commits(), nullptr);
}

}  // namespace grouped
