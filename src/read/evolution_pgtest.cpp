#include <atomic>
#include <cstdio>
#include <map>
#include <thread>
#include <vector>

#include "evolution_suite.hpp"

#include "postgres_backend.hpp"

namespace evolution {
INSTANTIATE_TYPED_TEST_SUITE_P(postgres, evolving, cleave::testing::postgres_backend);

struct transfer {
  std::string from;
  std::string to;
  std::int64_t amount = 0;
};
CLEAVE_COMMAND(transfer, "ledger.transfer", from, to, amount)
struct debited {
  std::int64_t amount = 0;
};
CLEAVE_EVENT(debited, "ledger.debited", amount)
struct credited {
  std::int64_t amount = 0;
};
CLEAVE_EVENT(credited, "ledger.credited", amount)

// The deadlocks PostgreSQL has detected in the database at `url` (as its statistics say once
// the backends involved have reported: they do as they exit).
std::int64_t deadlocks(const std::string& url) {
  PGconn* c = PQconnectdb(url.c_str());
  PGresult* r =
      PQexec(c, "select deadlocks from pg_stat_database where datname = current_database()");
  const std::int64_t n = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1
                             ? std::stoll(PQgetvalue(r, 0, 0))
                             : -1;
  PQclear(r);
  PQfinish(c);
  return n;
}

// Transfers between the same two accounts in opposite directions, from 8 clients: each command
// appends to both accounts' streams, in the order its handler chose. Without one order of
// locking the streams, two such commands each hold one stream's next version and wait for the
// other's (28 deadlocks in 30 s, a second lost to each, in the ledger that found it).
TEST(multi_stream_writes, opposite_transfers_between_the_same_accounts_never_deadlock) {
  cleave::testing::postgres_backend backend;
  auto db = backend.open();
  const auto deadlocks_before = deadlocks(backend.location());
  ASSERT_GE(deadlocks_before, 0);
  constexpr int clients = 8, per_client = 40;
  std::atomic<int> refused{0};
  {
    cleave::command_bus commands{db.get()};
    commands.add([](const transfer& t, cleave::write_context& tx) -> cleave::result<void> {
      tx.emit(t.from, debited{t.amount});
      tx.emit(t.to, credited{t.amount});
      return {};
    });
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c)
      threads.emplace_back([&, c] {
        const bool forth = c % 2 == 0;
        for (int i = 0; i < per_client; ++i) {
          const transfer t{forth ? "acct-a" : "acct-b", forth ? "acct-b" : "acct-a", c + 1};
          // A client sends again what lost every retry to its rivals (a conflict).
          bool done = false;
          for (int attempt = 0; attempt < 20 && !done; ++attempt) {
            auto sent = commands.send(t);
            done = sent.has_value();
            if (!sent && sent.error().category != cleave::errc::conflict) {
              ADD_FAILURE() << sent.error().describe();
              return;
            }
          }
          if (!done) ++refused;
        }
      });
    for (auto& t : threads) t.join();
  }
  const auto log = db->read_events({}, 1'000'000);
  db.reset();  // the server's backends end, and report their statistics
  EXPECT_EQ(refused.load(), 0);

  // Every transfer is there once, both halves, and money is conserved.
  std::map<std::string, std::int64_t> balance, version;
  for (const auto& e : log) {
    EXPECT_EQ(e.stream_version, static_cast<std::uint64_t>(++version[e.stream])) << e.stream;
    const cleave::json& payload = e.payload.value();
    balance[e.stream] +=
        (e.type == "ledger.credited" ? 1 : -1) * payload["amount"].get<std::int64_t>();
  }
  EXPECT_EQ(log.size(), static_cast<std::size_t>(2 * clients * per_client));
  EXPECT_EQ(balance["acct-a"] + balance["acct-b"], 0);
  std::int64_t expected_a = 0;
  for (int c = 0; c < clients; ++c) expected_a += (c % 2 == 0 ? -1 : 1) * (c + 1) * per_client;
  EXPECT_EQ(balance["acct-a"], expected_a);

  std::int64_t deadlocks_after = deadlocks_before;
  for (int i = 0; i < 20 && deadlocks_after == deadlocks_before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    deadlocks_after = deadlocks(backend.location());
  }
  EXPECT_EQ(deadlocks_after - deadlocks_before, 0) << "PostgreSQL detected deadlocks";
}

// Rebuilds swapped in while 8 clients write and the worker keeps the live view current. The swap
// takes the view's table before its checkpoint, as a live batch does (in the other order each
// holds what the other waits for), and is tried again when the database gives it up.
TEST(rebuild_swaps, under_write_load_never_deadlock_and_lose_no_event) {
  cleave::testing::postgres_backend backend;
  auto db = backend.open();
  const auto deadlocks_before = deadlocks(backend.location());
  ASSERT_GE(deadlocks_before, 0);
  auto opts = views::slow_poll();
  opts.retired_grace = std::chrono::milliseconds(0);
  cleave::projector projector(*db, nullptr, opts);
  projector.add(views::cards("cards_load"));
  cleave::command_bus commands{&projector.source()};
  commands.add(views::register_handler);
  projector.start();

  // Each client writes up to `per_client` commands, a few a millisecond (a bounded log keeps
  // each rebuild short), until the swaps are done.
  constexpr int clients = 8, swaps = 20, per_client = 400;
  std::atomic<bool> writing{true};
  std::atomic<int> sent{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      for (int i = 0; writing && i < per_client; ++i) {
        const views::register_customer command{fmt::format("c{}-{}", c, i), "n"};
        auto done = commands.send(command);
        for (int again = 0; !done && done.error().category == cleave::errc::conflict && again < 20;
             ++again)
          done = commands.send(command);
        if (!done) {
          ADD_FAILURE() << done.error().describe();
          return;
        }
        ++sent;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
  int swapped = 0;
  for (int i = 0; i < swaps; ++i) {
    const auto began = cleave::clock::now();
    try {
      swapped += projector.rebuild("cards_load").swapped ? 1 : 0;
    } catch (const cleave::error_exception& e) {
      ADD_FAILURE() << "rebuild " << i << ": " << e.error().describe();
    }
    std::fprintf(stderr, "rebuild %d: %lld ms, %d sent\n", i,
                 static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                            cleave::clock::now() - began)
                                            .count()),
                 sent.load());
  }
  writing = false;
  for (auto& t : threads) t.join();
  projector.stop();
  views::settle(projector);
  EXPECT_EQ(swapped, swaps);
  EXPECT_GT(sent.load(), swaps) << "the clients wrote while the views were swapped";
  EXPECT_EQ(views::rows(*db, "cards_load"), sent.load()) << "an event lost or applied twice";
  EXPECT_TRUE(projector.dead_letters("cards_load").empty());
  db.reset();

  std::int64_t deadlocks_after = deadlocks_before;
  for (int i = 0; i < 20 && deadlocks_after == deadlocks_before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    deadlocks_after = deadlocks(backend.location());
  }
  EXPECT_EQ(deadlocks_after - deadlocks_before, 0) << "PostgreSQL detected deadlocks";
}

}  // namespace evolution
