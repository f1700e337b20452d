#include <cleave/testing/kit.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cleave/write/event_sourced.hpp>

namespace library {

struct book_added {
  std::string isbn;
};
CLEAVE_EVENT(book_added, "library.book_added", isbn)
struct book_lent {
  std::string isbn;
  std::string reader;
};
CLEAVE_EVENT(book_lent, "library.book_lent", isbn, reader)

struct book {
  bool exists = false;
  std::optional<std::string> lent_to;
  void apply(const book_added&) { exists = true; }
  void apply(const book_lent& e) { lent_to = e.reader; }
};

struct lend {
  std::string isbn;
  std::string reader;
};
CLEAVE_COMMAND(lend, "library.lend", isbn, reader)

struct count_loans {
  using response = std::int64_t;
};
CLEAVE_COMMAND(count_loans, "library.count_loans")

const cleave::event_sourced<book, book_added, book_lent> books;

cleave::result<void> lend_book(const lend& c, cleave::write_context& tx) {
  auto b = books.load(tx, c.isbn);
  if (!b.state.exists) return cleave::not_found("no book " + c.isbn);
  if (b.state.lent_to) return cleave::rejected("already lent to " + *b.state.lent_to);
  b.emit(tx, book_lent{c.isbn, c.reader});
  tx.exec("insert into loans(isbn, reader) values ($1, $2)", c.isbn, c.reader);
  return {};
}

cleave::result<std::int64_t> loans(const count_loans&, cleave::write_context& tx) {
  return tx.one<std::int64_t>("select count(*) from loans");
}

constexpr cleave::migration schema[] = {
    {1, "loans", "create table loans(isbn text not null, reader text not null)"}};

}  // namespace library

namespace {

using namespace library;
using cleave::errc;
using testing::HasSubstr;

struct kit : testing::Test {
  cleave::testing::command_kit k{schema};
  void SetUp() override {
    k.commands().add(lend_book);
    k.commands().add(loans);
  }
};

TEST_F(kit, given_events_when_a_command_then_its_events) {
  k.given("isbn-1", book_added{"isbn-1"}).when(lend{"isbn-1", "ada"});
  auto v = k.then_events(book_lent{"isbn-1", "ada"});
  EXPECT_TRUE(v) << v.why;
}

TEST_F(kit, given_events_when_a_command_then_an_error) {
  k.given("isbn-1", book_added{"isbn-1"}, book_lent{"isbn-1", "ada"}).when(lend{"isbn-1", "alan"});
  auto v = k.then_error(errc::rejected, "already lent to ada");
  EXPECT_TRUE(v) << v.why;
  k.when(lend{"isbn-9", "alan"});
  EXPECT_TRUE(k.then_error(errc::not_found));
}

TEST_F(kit, given_rows_when_a_command_then_its_response) {
  k.given_sql("insert into loans(isbn, reader) values ('x', 'y'), ('z', 'w')").when(count_loans{});
  EXPECT_TRUE(k.then_response(std::int64_t{2}));
  EXPECT_TRUE(k.then_no_events());
}

TEST_F(kit, a_verdict_says_what_differed) {
  k.given("isbn-1", book_added{"isbn-1"}).when(lend{"isbn-1", "ada"});
  auto wrong_reader = k.then_events(book_lent{"isbn-1", "alan"});
  EXPECT_FALSE(wrong_reader);
  EXPECT_THAT(wrong_reader.why,
              HasSubstr(R"(expected library.book_lent {"isbn":"isbn-1","reader":"alan"})"));
  auto too_few = k.then_events(book_lent{"isbn-1", "ada"}, book_added{"isbn-2"});
  EXPECT_FALSE(too_few);
  EXPECT_THAT(too_few.why, HasSubstr("appended 1 event(s), expected 2"));
  auto not_an_error = k.then_error(errc::rejected);
  EXPECT_FALSE(not_an_error);
  EXPECT_THAT(not_an_error.why, HasSubstr("the command succeeded"));
  k.when(lend{"isbn-1", "alan"});
  auto failed = k.then_events(book_lent{"isbn-1", "alan"});
  EXPECT_FALSE(failed);
  EXPECT_THAT(failed.why, HasSubstr("the command failed: rejected: already lent to ada"));
  EXPECT_THAT(k.then_error(errc::conflict).why,
              HasSubstr("expected a conflict error, got rejected"));
}

TEST_F(kit, each_kit_has_its_own_database) {
  cleave::testing::command_kit other{schema};
  other.commands().add(loans);
  k.given_sql("insert into loans(isbn, reader) values ('x', 'y')");
  other.when(count_loans{});
  EXPECT_TRUE(other.then_response(std::int64_t{0}));
}

// Release 1 stored `library.book_added` under its old name and shape; release 2 reads it through
// an upcaster, in a handler's aggregate as in a test's.
TEST(command_kit, loads_an_aggregate_with_public_calls_through_the_upcasters) {
  cleave::upcasters rewrites;
  rewrites.add("library.book_catalogued", "library.book_added",
               [](cleave::json& payload) { payload["isbn"] = payload["code"]; });
  const cleave::event_sourced<book, book_added, book_lent> upcast_books{&rewrites};
  cleave::testing::command_kit kit;
  kit.given_stored("isbn-1", "library.book_catalogued", cleave::json{{"code", "isbn-1"}})
      .given("isbn-1", book_lent{"isbn-1", "Ada"});
  const auto loaded =
      kit.read([&](const cleave::read_context& tx) { return upcast_books.load(tx, "isbn-1"); });
  EXPECT_TRUE(loaded.state.exists);
  EXPECT_EQ(loaded.state.lent_to, "Ada");
  EXPECT_EQ(loaded.version, 2u);
}

cleave::testing::command_kit library_kit() {
  cleave::testing::command_kit kit{library::schema};
  kit.commands().add(lend_book);
  kit.commands().add(loans);
  return kit;
}

// A kit made by a factory works where it lands.
TEST(command_kit, moves_out_of_a_factory) {
  auto kit = library_kit();
  kit.given("isbn-2", book_added{"isbn-2"}).when(lend{"isbn-2", "Grace"});
  EXPECT_TRUE(kit.then_events(book_lent{"isbn-2", "Grace"}));
  kit.when(count_loans{});
  EXPECT_TRUE(kit.then_response(std::int64_t{1}));
}

}  // namespace
