#include <cleave/cleave.hpp>
#include <cleave/sqlite/store.hpp>
#include <cleave/store/backends.hpp>

#include <cstdio>

struct ping {
  int n = 0;
  using response = int;
};
CLEAVE_COMMAND(ping, "consumer.ping", n)

struct pinged {
  int n = 0;
};
CLEAVE_EVENT(pinged, "consumer.pinged", n)

int main() {
  cleave::sqlite::store db{{.path = ":memory:"}};
  cleave::command_bus commands{&db};
  commands.add([](const ping& p, cleave::write_context& tx) -> cleave::result<int> {
    tx.emit(pinged{p.n});
    return p.n + 1;
  });
  auto r = commands.send_json("consumer.ping", cleave::json{{"n", 41}});
  if (!r || r->result != 42 || db.read_events({}, 10).size() != 1) return 1;
  // Linking cleave::sqlite registers it by URL scheme, with nothing else naming it.
  auto by_url = cleave::open_store({.url = "sqlite::memory:"});
  if (by_url->dialect() != "sqlite") return 1;
  std::puts("consumer ok");
  return 0;
}
