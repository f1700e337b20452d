// The NATS tests' application as a process of its own, to be killed:
//   CLEAVE_DATABASE=... NATS_URL=... cleave_nats_helper relay | inbox run | ...

#include <cstdlib>

#include "test_app.hpp"

int main(int argc, char** argv) {
  auto config = cleave::load_config("/nonexistent/nats-helper.json");
  if (!config) return 2;
  config->log_level = "error";
  cleave::app a(*config);
  const char* url = std::getenv("NATS_URL");
  nats_test::install(a, url ? url : "nats://127.0.0.1:4222");
  return a.main(argc, argv);
}
