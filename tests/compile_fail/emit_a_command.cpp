// expect: emit() takes an event
#include "messages.hpp"

cleave::result<void> deposit(const demo::deposit& d, cleave::write_context& ctx) {
  ctx.emit(d);
  return {};
}

int main() {
  cleave::command_bus commands;
  commands.add(deposit);
}
