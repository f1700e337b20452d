// Gap safety on SQLite: one writer at a time, so positions commit in order, and a reader never
// skips an event that commits later at a lower position.

#include <cleave/sqlite/store.hpp>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include <cleave/cleave.hpp>

#include "temp_dir.hpp"

namespace gap {
struct tick {
  std::int64_t writer = 0;
  std::int64_t seq = 0;
};
CLEAVE_EVENT(tick, "gap.tick", writer, seq)
}  // namespace gap

namespace {

using namespace std::chrono_literals;

TEST(sqlite_gap, a_second_writer_waits_and_the_two_commit_in_order) {
  cleave::testing::temp_dir dir;
  const auto path = dir.file("gap.db");
  cleave::sqlite::store first{{.path = path}};
  cleave::sqlite::store second{{.path = path}};  // its own connection, as another process

  auto& a = first.begin_write({});
  cleave::write_context ctx_a(&a, cleave::detail::no_meta);
  ctx_a.emit(gap::tick{1, 1});

  std::atomic<bool> second_began{false};
  cleave::position_token second_position;
  std::thread other([&] {
    auto& b = second.begin_write({});  // waits for `first` to commit
    second_began = true;
    cleave::write_context ctx_b(&b, cleave::detail::no_meta);
    ctx_b.emit(gap::tick{2, 1});
    second_position = b.commit();
  });
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(second_began) << "a second writer began while the first was open";
  const auto first_position = a.commit();
  other.join();
  EXPECT_LT(first_position, second_position);
  auto events = first.read_events({}, 10);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].payload["writer"], 1);
  EXPECT_EQ(events[1].payload["writer"], 2);
}

TEST(sqlite_gap, randomized_writers_and_a_reader_see_every_committed_event_once_in_order) {
  cleave::testing::temp_dir dir;
  const auto path = dir.file("stress.db");
  cleave::sqlite::store reader_store{{.path = path, .sync = cleave::sqlite::durability::normal}};
  constexpr int writers = 4;
  constexpr int per_writer = 150;

  std::mutex committed_mutex;
  std::set<std::pair<std::int64_t, std::int64_t>> committed;  // (writer, seq) acknowledged
  std::atomic<int> done_writers{0};

  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      cleave::sqlite::store mine{{.path = path, .sync = cleave::sqlite::durability::normal}};
      std::mt19937 rng(static_cast<unsigned>(w) * 7919u + 1u);
      std::uniform_int_distribution<int> delay_us(0, 400), roll(0, 99), batch(1, 3);
      for (int seq = 0; seq < per_writer; ++seq) {
        auto& tx = mine.begin_write({});
        cleave::write_context ctx(&tx, cleave::detail::no_meta);
        const int n = batch(rng);
        for (int i = 0; i < n; ++i) ctx.emit(gap::tick{w, seq * 10 + i});
        std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
        if (roll(rng) == 0) {  // about 1% roll back
          tx.rollback();
          continue;
        }
        tx.commit();
        std::lock_guard lock(committed_mutex);
        for (int i = 0; i < n; ++i) committed.emplace(w, seq * 10 + i);
      }
      ++done_writers;
    });
  }

  std::vector<cleave::stored_event> seen;
  cleave::position_token after;
  auto drain = [&] {
    for (;;) {
      auto batch = reader_store.read_events(after, 64);
      if (batch.empty()) return;
      for (auto& e : batch) {
        ASSERT_LT(after, e.position) << "the reader went backwards";
        after = e.position;
        seen.push_back(std::move(e));
      }
    }
  };
  while (done_writers < writers) {
    drain();
    std::this_thread::sleep_for(200us);
  }
  for (auto& t : threads) t.join();
  drain();

  std::set<std::pair<std::int64_t, std::int64_t>> observed;
  for (const auto& e : seen) {
    auto key = std::make_pair(e.payload["writer"].get<std::int64_t>(),
                              e.payload["seq"].get<std::int64_t>());
    EXPECT_TRUE(observed.insert(key).second) << "seen twice: " << key.first << "/" << key.second;
  }
  EXPECT_EQ(observed, committed) << "the reader missed or invented events";
  for (std::size_t i = 1; i < seen.size(); ++i)
    ASSERT_EQ(seen[i].position.position(), seen[i - 1].position.position() + 1)
        << "positions visible to the reader have a gap";
}

}  // namespace
