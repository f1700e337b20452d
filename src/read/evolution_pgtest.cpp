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

}  // namespace evolution
