// expect: this handler takes a command: add it to the command bus, not the query bus
#include "messages.hpp"

cleave::result<void> deposit(const demo::deposit&, const cleave::read_context&) {
  return {};
}

int main() {
  cleave::query_bus queries;
  queries.add(deposit);
}
