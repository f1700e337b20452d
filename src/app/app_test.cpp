// The application shell: wiring checked at start-up.

#include <cleave/app/app.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

}  // namespace wiring
