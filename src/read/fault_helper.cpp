// The projector as its own process, for the fault and scale tests: a per-stream counter view
// ("tally", a fold; "unit_tally", a handler in 4 partitions) over a database named by a path or
// a postgresql:// URL.
//
//   cleave_fault_projector DATABASE catch-up        applies everything, then exits 0
//   cleave_fault_projector DATABASE serve MARKER    runs the worker (leader election); writes
//                                                   MARKER while it leads; stops on SIGTERM
//   cleave_fault_projector DATABASE share NODE [SLOW_MS]
//                                                   runs the worker over unit_tally as projector
//                                                   process NODE, sharing its units with the
//                                                   others (each event taking SLOW_MS longer);
//                                                   stops on SIGTERM
//   cleave_fault_projector DATABASE replay SLOW_MS  replays unit_tally's dead letters, each
//                                                   event taking SLOW_MS longer

#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <unordered_map>

#include <pthread.h>

#include <cleave/postgres/store.hpp>
#include <cleave/read/projector.hpp>
#include <cleave/sqlite/store.hpp>

#include "fault_view.hpp"

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string database = argv[1], mode = argv[2];
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::unique_ptr<cleave::store> db;
  if (database.starts_with("postgresql://"))
    db = std::make_unique<cleave::postgres::store>(cleave::postgres::options{.url = database});
  else
    db = std::make_unique<cleave::sqlite::store>(
        cleave::sqlite::options{.path = database, .sync = cleave::sqlite::durability::normal});
  cleave::projector_options opts;
  opts.batch = 2000;
  opts.standby_retry = std::chrono::milliseconds(20);
  opts.poll = std::chrono::milliseconds(200);
  if (mode == "share" && argc >= 4) opts.node = argv[3];
  cleave::projector p(*db, nullptr, opts);
  if (mode == "share" || mode == "replay") {
    const int slow_arg = mode == "replay" ? 3 : 4;
    const auto slow = std::chrono::milliseconds(argc > slow_arg ? std::stoi(argv[slow_arg]) : 0);
    p.add(fault::unit_tally(4, nullptr, slow));
  } else {
    p.add(fault::tally());
  }
  if (mode == "catch-up") {
    p.catch_up();
    return 0;
  }
  if (mode == "replay") {
    p.replay_dead_letters("unit_tally");
    return 0;
  }
  if (mode == "share") {
    p.start();
    int sig = 0;
    sigwait(&set, &sig);
    p.stop();
    return 0;
  }
  if (mode != "serve" || argc < 4) return 2;
  p.start();
  std::thread marker([&] {
    while (!p.leading()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::ofstream(argv[3]) << "leading\n";
  });
  int sig = 0;
  sigwait(&set, &sig);
  p.stop();
  marker.detach();
  return 0;
}
