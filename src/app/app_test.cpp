// The application shell: wiring checked at start-up.

#include <cleave/app/app.hpp>

#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "temp_dir.hpp"

namespace wiring {

struct note_added {
  std::string id;
};
CLEAVE_EVENT(note_added, "wiring.note_added", id)

struct note {
  std::string id;
};
CLEAVE_RECORD(note, id)

struct note_by_id {
  std::string id;
  using response = note;
};
CLEAVE_QUERY(note_by_id, "wiring.note_by_id", id)

cleave::result<note> by_id(const note_by_id& q) {
  return note{q.id};
}

struct events_counted {
  std::string why;
  using response = std::int64_t;
};
CLEAVE_QUERY(events_counted, "wiring.events_counted", why)

cleave::app_config in_memory() {
  cleave::app_config cfg;
  cfg.database = ":memory:";
  cfg.run_projector = false;
  return cfg;
}

cleave::projection notes() {
  cleave::projection p{"notes"};
  p.schema("create table {view}(id text primary key)")
      .on([](const note_added& e, cleave::view_context& v) {
        v.exec("insert into {view}(id) values ($1)", e.id);
      });
  return p;
}

struct add_note {
  std::string id;
};
CLEAVE_COMMAND(add_note, "wiring.add_note", id)

cleave::result<void> adding(const add_note& c, cleave::write_context& tx) {
  tx.emit(c.id, note_added{c.id});
  return {};
}

TEST(app_wiring, reads_of_a_misspelt_query_or_projection_fail_at_start_naming_the_known_ones) {
  cleave::app app{in_memory()};
  app.queries().add(by_id);
  app.add_projection(notes());
  app.reads("wiring.note_by_id", {"notse"});
  app.reads("wiring.note_by_di", {"notes"});
  try {
    app.migrate();
    FAIL() << "migrate() accepted reads() of names that do not exist";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, cleave::errc::validation);
    const auto& text = e.error().message;
    EXPECT_THAT(text, ::testing::HasSubstr("'notse'"));
    EXPECT_THAT(text, ::testing::HasSubstr("'wiring.note_by_di'"));
    EXPECT_THAT(text, ::testing::HasSubstr("the projections are 'notes'"));
    EXPECT_THAT(text, ::testing::HasSubstr("the queries are 'wiring.note_by_id'"));
  }
}

TEST(app_wiring, reads_of_known_names_start) {
  cleave::app app{in_memory()};
  app.queries().add(by_id);
  app.add_projection(notes());
  app.reads("wiring.note_by_id", {"notes"});
  EXPECT_NO_THROW(app.migrate());
}

// Runs `app args...` as main() would: the exit code, stdout and stderr.
struct run_result {
  int code;
  std::string out, err;
};
run_result run(cleave::app& app, std::vector<std::string> args) {
  args.insert(args.begin(), "app");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const int code = app.main(static_cast<int>(argv.size()), argv.data());
  auto out = ::testing::internal::GetCapturedStdout();
  return {code, out, ::testing::internal::GetCapturedStderr()};
}

// Release 1 stored notes as "wiring.note_posted"; today's name is "wiring.note_added".
struct note_posted {
  std::string id;
};
CLEAVE_EVENT(note_posted, "wiring.note_posted", id)

TEST(app_upcasters, reach_the_apps_projector_its_rebuilds_and_events_tail) {
  cleave::app app{in_memory()};
  app.upcasters().add("wiring.note_posted", "wiring.note_added");
  app.add_projection(notes());
  app.migrate();
  {  // what release 1 wrote
    cleave::write_scope tx(app.store(), {});
    cleave::write_context ctx(&*tx, {});
    for (const std::string id : {"a", "b", "c"}) ctx.emit("note-" + id, note_posted{id});
    tx.commit();
  }
  app.projections().catch_up();
  auto count = [&] {
    cleave::read_scope tx(app.store(), {}, cleave::strong());
    cleave::read_context ctx(&*tx, {});
    return ctx.one<std::int64_t>("select count(*) from notes").value_or(-1);
  };
  EXPECT_EQ(count(), 3) << "the old events were dropped";
  cleave::rebuild_options verified;
  verified.verify = true;
  const auto rebuilt = app.projections().rebuild("notes", verified);
  EXPECT_EQ(rebuilt.differences, 0);
  EXPECT_TRUE(rebuilt.swapped);
  EXPECT_EQ(count(), 3);

  const auto tail = run(app, {"events", "tail"});
  EXPECT_EQ(tail.code, 0) << tail.err;
  EXPECT_THAT(tail.out, ::testing::HasSubstr(R"("type":"wiring.note_added")"));
  EXPECT_THAT(tail.out, ::testing::HasSubstr(R"("stored_type":"wiring.note_posted")"));
}

// The admin API's rebuild of an in-memory view was accepted (202) and then failed in the
// background with "no projection named …"; it is refused before any job starts.
TEST(app_rebuilds, of_an_in_memory_view_are_refused_before_a_job_starts) {
  cleave::app app{in_memory()};
  cleave::memory_view<std::int64_t> counted{"counted"};
  counted.on([](const note_added&, std::int64_t& n) { ++n; });
  app.projections().add(counted);
  try {
    app.start_rebuild("counted");
    ADD_FAILURE() << "a rebuild of an in-memory view was started";
  } catch (const cleave::error_exception& e) {
    EXPECT_EQ(e.error().category, cleave::errc::validation);
    EXPECT_THAT(e.error().message, ::testing::HasSubstr("'counted' is an in-memory view"));
  }
  EXPECT_TRUE(app.rebuild_jobs().empty());
}

struct notebook {
  std::int64_t notes = 0;
  void apply(const note_added&) { ++notes; }
};

// The aggregates the app makes read old events through its upcasters, as its projector does.
TEST(app_upcasters, reach_the_apps_aggregates) {
  cleave::app app{in_memory()};
  app.upcasters().add("wiring.note_posted", "wiring.note_added");
  app.migrate();
  {  // what release 1 wrote
    cleave::write_scope tx(app.store(), {});
    cleave::write_context ctx(&*tx, {});
    ctx.emit("book-1", note_posted{"a"});
    ctx.emit("book-1", note_added{"b"});
    tx.commit();
  }
  const auto books = app.aggregate<notebook, note_added>();
  cleave::read_scope tx(app.store(), {}, cleave::strong());
  const cleave::read_context ctx(&*tx, {});
  const auto loaded = books.load(ctx, "book-1");
  EXPECT_EQ(loaded.state.notes, 2);
  EXPECT_EQ(loaded.version, 2u);
}

TEST(app_verbs, every_verb_answers_help_with_its_usage_and_exit_code_0) {
  cleave::app app{in_memory()};
  for (const std::vector<std::string>& args : {std::vector<std::string>{"send", "--help"},
                                               {"ask", "-h"},
                                               {"events", "--help"},
                                               {"events", "tail", "--help"},
                                               {"status", "--help"},
                                               {"project", "--help"},
                                               {"projections", "--help"},
                                               {"projections", "rebuild", "--help"},
                                               {"migrate", "--help"},
                                               {"send", "NAME", "{}", "--help"}}) {
    const auto r = run(app, args);
    EXPECT_EQ(r.code, 0) << args[0] << r.err;
    EXPECT_THAT(r.out, ::testing::HasSubstr("Usage: " + args[0])) << args[0];
  }
  EXPECT_THAT(run(app, {"send", "--help"}).out, ::testing::HasSubstr("--id KEY"));
  EXPECT_THAT(run(app, {"projections", "rebuild", "--help"}).out, ::testing::HasSubstr("--verify"));
}

// `load` sends one command from many threads for a while and says how many went through: every
// one of them is in the log, with the first send that checked the command runs.
// The position an answer carries names no write the answer misses: it is read in the answer's
// own transaction, not after it.
TEST(app_queries, an_answers_position_is_where_its_own_read_stood) {
  cleave::testing::temp_dir dir;
  cleave::app_config cfg;
  cfg.database = dir.file("app.db");  // (a file: the writer goes on while a read is open)
  cfg.run_projector = false;
  cleave::app app{cfg};
  app.commands().add(adding);
  app.queries().add([&app](const events_counted&,
                           const cleave::read_context& db) -> cleave::result<std::int64_t> {
    const auto n = db.one<std::int64_t>("select count(*) from cleave_events");  // snapshot here
    std::thread later([&app] { EXPECT_TRUE(app.commands().send(add_note{"later"})); });
    later.join();  // committed while this read is open; the answer does not see it
    return n.value_or(-1);
  });
  app.migrate();
  const auto first = app.commands().send(add_note{"first"});
  ASSERT_TRUE(first);
  const auto r = app.queries().ask_json("wiring.events_counted", {{"why", "test"}});
  ASSERT_TRUE(r) << r.error().describe();
  EXPECT_EQ(r->result, 1);
  EXPECT_EQ(r->position, first->position);
  EXPECT_LT(first->position, app.store().head());  // (the later command did commit)
}

TEST(app_verbs, load_sends_a_command_from_many_threads_and_counts_what_went_through) {
  cleave::app app{in_memory()};
  app.commands().add(adding);
  app.migrate();
  const auto r =
      run(app, {"load", "wiring.add_note", R"({"id":"n"})", "--clients", "4", "--seconds", "0.3"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = cleave::json::parse(r.out);
  EXPECT_EQ(out["clients"], 4);
  EXPECT_EQ(out["failed"], 0);
  const auto sent = out["sent"].get<std::uint64_t>();
  EXPECT_GT(sent, 0u);
  EXPECT_GT(out["commands_per_s"].get<double>(), 0.0);
  EXPECT_EQ(app.store().read_events({}, sent + 10).size(), sent + 1);
  const auto refused = run(app, {"load", "wiring.no_such", "{}", "--seconds", "0.1"});
  EXPECT_EQ(refused.code, 2);
  EXPECT_THAT(refused.err, ::testing::HasSubstr("wiring.no_such"));
}

TEST(app_verbs, no_verb_or_an_unknown_one_lists_the_verbs_with_exit_code_2) {
  cleave::app app{in_memory()};
  const auto none = run(app, {});
  EXPECT_EQ(none.code, 2);
  EXPECT_THAT(none.out, ::testing::HasSubstr("  send NAME JSON [--id KEY]"));
  const auto unknown = run(app, {"sned"});
  EXPECT_EQ(unknown.code, 2);
  EXPECT_THAT(unknown.err, ::testing::HasSubstr("unknown verb 'sned'"));
  EXPECT_THAT(unknown.err, ::testing::HasSubstr("  projections list | rebuild NAME"));
  EXPECT_EQ(unknown.out, "");
  const auto help = run(app, {"help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, ::testing::HasSubstr("  migrate "));
}

TEST(app_verbs, arguments_a_verb_does_not_take_are_a_usage_error_with_exit_code_2) {
  cleave::app app{in_memory()};
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{"send", "only-a-name"}, "usage: send NAME JSON [--id KEY]"},
      {{"send", "n", "{}", "--idx", "k"}, "usage: send NAME JSON [--id KEY]"},
      {{"ask", "n", "{}", "--consistency"}, "usage: ask NAME JSON [--consistency "},
      {{"events", "head"}, "usage: events tail [--follow]"},
      {{"projections"}, "usage: projections list | rebuild NAME"},
      {{"projections", "list", "extra"}, "usage: projections list | rebuild NAME"},
      {{"projections", "rebuild", "notes", "--bogus"}, "usage: projections list"},
  };
  for (const auto& [args, usage] : cases) {
    const auto r = run(app, args);
    EXPECT_EQ(r.code, 2) << args[0];
    EXPECT_THAT(r.err, ::testing::HasSubstr("error: validation: " + usage)) << args[0];
    EXPECT_EQ(r.out, "") << args[0];
  }
  // An invalid value is named as before.
  const auto bogus = run(app, {"ask", "wiring.note_by_id", "{}", "--consistency", "bogus"});
  EXPECT_EQ(bogus.code, 2);
  EXPECT_THAT(bogus.err, ::testing::HasSubstr("'bogus' is not eventual, strong"));
}

}  // namespace wiring
