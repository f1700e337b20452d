#include <cleave/cleave.hpp>

#include <cstdio>

struct ping {
  int n = 0;
  using response = int;
};
CLEAVE_COMMAND(ping, "consumer.ping", n)

int main() {
  cleave::command_bus commands;
  commands.add([](const ping& p) -> cleave::result<int> { return p.n + 1; });
  auto r = commands.send_json("consumer.ping", cleave::json{{"n", 41}});
  if (!r || r->result != 42) return 1;
  std::puts("consumer ok");
  return 0;
}
