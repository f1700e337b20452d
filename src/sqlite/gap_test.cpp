// Gap safety on SQLite: one writer at a time, so positions commit in order, and a reader never
// skips an event that commits later at a lower position.

#include <cleave/sqlite/store.hpp>

#include "store_conformance.hpp"
#include "temp_dir.hpp"

namespace conformance {
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(store_conformance);
}  // namespace conformance

namespace {

using namespace std::chrono_literals;

struct sqlite_backend {
  cleave::testing::temp_dir dir;
  std::unique_ptr<cleave::store> open() const {
    return std::make_unique<cleave::sqlite::store>(cleave::sqlite::options{
        .path = dir.file("gap.db"), .sync = cleave::sqlite::durability::normal});
  }
};

TEST(sqlite_gap, a_second_writer_waits_and_the_two_commit_in_order) {
  sqlite_backend backend;
  auto first = backend.open();
  auto second = backend.open();  // its own connection, as another process

  auto& a = first->begin_write({});
  cleave::write_context ctx_a(&a, cleave::detail::no_meta);
  ctx_a.emit(conformance::tick{1, 1});

  std::atomic<bool> second_began{false};
  cleave::position_token second_position;
  std::thread other([&] {
    auto& b = second->begin_write({});  // waits for `first` to commit
    second_began = true;
    cleave::write_context ctx_b(&b, cleave::detail::no_meta);
    ctx_b.emit(conformance::tick{2, 1});
    second_position = b.commit();
  });
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(second_began) << "a second writer began while the first was open";
  const auto first_position = a.commit();
  other.join();
  EXPECT_LT(first_position, second_position);
  auto events = first->read_events({}, 10);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].payload.value()["writer"], 1);
  EXPECT_EQ(events[1].payload.value()["writer"], 2);
}

TEST(sqlite_gap, randomized_writers_and_a_reader_see_every_committed_event_once_in_order) {
  sqlite_backend backend;
  auto seen = conformance::gap_stress(backend, 4, 150);
  for (std::size_t i = 1; i < seen.size(); ++i)
    ASSERT_EQ(seen[i].position.position(), seen[i - 1].position.position() + 1)
        << "positions visible to the reader have a gap";
}

}  // namespace
