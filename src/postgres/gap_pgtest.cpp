// Gap safety on PostgreSQL: writers commit concurrently and out of position order; the reader
// reads by (transaction id, position) below the oldest running transaction, so it never passes
// an event a still-open transaction may commit.

#include <cleave/postgres/store.hpp>

#include "postgres_backend.hpp"
#include "store_conformance.hpp"

namespace conformance {
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(store_conformance);
}  // namespace conformance

namespace {

using namespace std::chrono_literals;

using cleave::testing::postgres_backend;

TEST(postgres_gap, an_open_transaction_holds_the_reader_back_until_it_ends) {
  postgres_backend backend;
  auto db = backend.open();
  // The slow writer takes its position first, then stays open.
  auto& slow = db->begin_write({});
  cleave::write_context slow_ctx(&slow, cleave::detail::no_meta);
  slow_ctx.emit(conformance::tick{1, 1});
  slow.position_so_far();  // (events are sent when their position is needed, or at commit)

  for (int i = 0; i < 3; ++i) {  // later writers commit
    auto& fast = db->begin_write({});
    cleave::write_context ctx(&fast, cleave::detail::no_meta);
    ctx.emit(conformance::tick{2, i});
    fast.commit();
  }
  EXPECT_TRUE(db->read_events({}, 100).empty())
      << "the reader passed an event an open transaction may still commit";
  const auto newest = db->head();
  EXPECT_FALSE(newest.empty()) << "head() is the newest committed event, seen or not yet";

  slow.commit();
  auto events = db->read_events({}, 100);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].payload.value()["writer"], 1);  // the slow one's transaction began first
  for (std::size_t i = 1; i < events.size(); ++i)
    EXPECT_LT(events[i - 1].position, events[i].position);
  EXPECT_EQ(db->head(), events.back().position);
  EXPECT_EQ(newest, events.back().position);
}

TEST(postgres_gap, a_reader_that_resumes_never_skips_a_late_commit) {
  postgres_backend backend;
  auto db = backend.open();
  auto& early = db->begin_write({});
  cleave::write_context early_ctx(&early, cleave::detail::no_meta);
  early_ctx.emit(conformance::tick{1, 0});  // lower position, still open
  {
    auto& late = db->begin_write({});
    cleave::write_context ctx(&late, cleave::detail::no_meta);
    ctx.emit(conformance::tick{2, 0});
    late.commit();
  }
  auto first_read = db->read_events({}, 100);
  early.commit();
  auto after = first_read.empty() ? cleave::position_token{} : first_read.back().position;
  auto second_read = db->read_events(after, 100);
  EXPECT_EQ(first_read.size() + second_read.size(), 2u);
}

TEST(postgres_gap, randomized_writers_and_a_reader_see_every_committed_event_once_in_order) {
  postgres_backend backend;
  conformance::gap_stress(backend, 6, 120);
}

}  // namespace
