// quickstart: commands and queries flowing through cleave's two buses, in one process.
// A small lending library kept in memory: commands change it, queries read it, behaviors run
// around both. (The shop example, on a real database, arrives with cleave's storage.)

#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <cleave/cleave.hpp>

namespace library {

struct add_book {
  std::string isbn;
  std::string title;
  cleave::result<void> validate() const {
    if (isbn.size() != 13) return cleave::invalid("isbn", "must have 13 digits");
    return {};
  }
};
CLEAVE_COMMAND(add_book, "library.add_book", isbn, title)

struct lend_book {
  std::string isbn;
  std::string reader;
  using response = int;  // how many times the book has been lent, this time included
};
CLEAVE_COMMAND(lend_book, "library.lend_book", isbn, reader)

struct book_card {
  std::string isbn;
  std::string title;
  std::optional<std::string> lent_to;
  int times_lent = 0;
};
CLEAVE_RECORD(book_card, isbn, title, lent_to, times_lent)

struct book_by_isbn {
  std::string isbn;
  using response = book_card;
};
CLEAVE_QUERY(book_by_isbn, "library.book_by_isbn", isbn)

struct available_books {
  using response = std::vector<book_card>;
};
CLEAVE_QUERY(available_books, "library.available_books")

// The state both sides share here; with a store, commands would write tables and queries read them.
class shelf {
 public:
  cleave::result<void> add(const add_book& c, cleave::write_context&) {
    std::lock_guard lock(mutex_);
    if (!books_.emplace(c.isbn, book_card{c.isbn, c.title, std::nullopt, 0}).second)
      return cleave::fail(cleave::errc::conflict,
                          fmt::format("book {} is already on the shelf", c.isbn));
    return {};
  }

  cleave::result<int> lend(const lend_book& c, cleave::write_context&) {
    std::lock_guard lock(mutex_);
    auto it = books_.find(c.isbn);
    if (it == books_.end()) return cleave::not_found(fmt::format("no book {}", c.isbn));
    if (it->second.lent_to)
      return cleave::rejected(fmt::format("already lent to {}", *it->second.lent_to));
    it->second.lent_to = c.reader;
    return ++it->second.times_lent;
  }

  cleave::result<book_card> card(const book_by_isbn& q, const cleave::read_context&) const {
    std::lock_guard lock(mutex_);
    auto it = books_.find(q.isbn);
    if (it == books_.end()) return cleave::not_found(fmt::format("no book {}", q.isbn));
    return it->second;
  }

  cleave::result<std::vector<book_card>> available(const available_books&,
                                                   const cleave::read_context&) const {
    std::lock_guard lock(mutex_);
    std::vector<book_card> out;
    for (const auto& [isbn, card] : books_)
      if (!card.lent_to) out.push_back(card);
    return out;
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, book_card> books_;
};

}  // namespace library

namespace {

template <class T>
void show(std::string_view what, const cleave::result<T>& r) {
  if (!r) {
    fmt::print("  {:<48} -> refused: {}\n", what, r.error().describe());
    // NOLINTNEXTLINE(bugprone-branch-clone): discarded `if constexpr` branches look alike to it
  } else if constexpr (requires { r->value; }) {
    fmt::print("  {:<48} -> ok, response {}\n", what, cleave::to_json(r->value).dump());
  } else if constexpr (std::is_same_v<T, cleave::sent<void>>) {
    fmt::print("  {:<48} -> ok\n", what);
  } else if constexpr (std::is_same_v<T, cleave::json_outcome>) {
    fmt::print("  {:<48} -> ok, response {}\n", what, r->result.dump());
  } else {
    fmt::print("  {:<48} -> {}\n", what, cleave::to_json(*r).dump());
  }
}

}  // namespace

int main() {
  using namespace library;
  shelf books;
  cleave::command_bus commands;
  cleave::query_bus queries;

  commands.use<cleave::validation>();
  auto& command_timing = commands.use<cleave::timing>();
  queries.use<cleave::validation>();
  commands.add([&](const add_book& c, cleave::write_context& ctx) { return books.add(c, ctx); });
  commands.add([&](const lend_book& c, cleave::write_context& ctx) { return books.lend(c, ctx); });
  queries.add(
      [&](const book_by_isbn& q, const cleave::read_context& ctx) { return books.card(q, ctx); });
  queries.add([&](const available_books& q, const cleave::read_context& ctx) {
    return books.available(q, ctx);
  });
  if (auto complete = commands.check_complete(); !complete) return 1;
  if (auto complete = queries.check_complete(); !complete) return 1;

  fmt::print("cleave quickstart: a lending library on two buses\n\ncommands (typed):\n");
  show("add_book 9780262033848 'Algorithms'",
       commands.send(add_book{"9780262033848", "Algorithms"}));
  show("add_book 9780131103627 'The C Language'",
       commands.send(add_book{"9780131103627", "The C Language"}));
  show("add_book 123 'Too short'", commands.send(add_book{"123", "Too short"}));
  show("lend_book 9780262033848 to ada", commands.send(lend_book{"9780262033848", "ada"}));
  show("lend_book 9780262033848 to alan", commands.send(lend_book{"9780262033848", "alan"}));

  fmt::print("\nqueries (typed):\n");
  show("book_by_isbn 9780262033848", queries.ask(book_by_isbn{"9780262033848"}));
  show("available_books", queries.ask(available_books{}));

  fmt::print("\nby wire name with a JSON body (as HTTP and the CLI will):\n");
  auto body = [](const char* text) { return *cleave::parse_json(text); };
  show(R"(library.lend_book {"isbn":"9780131103627",...})",
       commands.send_json("library.lend_book",
                          body(R"({"isbn":"9780131103627","reader":"grace"})")));
  show(R"(library.lend_book {"isbn":97801,...})",
       commands.send_json("library.lend_book", body(R"({"isbn":97801,"reader":"grace","x":1})")));
  show("library.burn_book {}", commands.send_json("library.burn_book", body("{}")));
  show(R"(library.available_books {})", queries.ask_json("library.available_books", body("{}")));

  auto lent = command_timing.figures_for("library.lend_book");
  fmt::print("\ntiming behavior: library.lend_book ran {} times, {} refused, {} ns in all\n",
             lent->count, lent->failures, lent->total.count());
  return 0;
}
