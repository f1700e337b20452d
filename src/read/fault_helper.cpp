// The projector as its own process, for the fault tests: a per-stream counter view ("tally")
// over a database named by a path or a postgresql:// URL.
//
//   cleave_fault_projector DATABASE catch-up        applies everything, then exits 0
//   cleave_fault_projector DATABASE serve MARKER    runs the worker (leader election); writes
//                                                   MARKER while it leads; stops on SIGTERM

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
  cleave::projector p(*db, nullptr, opts);
  p.add(fault::tally());
  if (mode == "catch-up") {
    p.catch_up();
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
