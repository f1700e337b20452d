// The control case: correct use compiles, so the failures below fail for the reason they name.
// expect-success
#include "messages.hpp"

cleave::result<void> deposit(const demo::deposit& d, cleave::write_context& ctx) {
  ctx.emit(d.account, demo::deposited{d.account});
  return {};
}
cleave::result<int> balance(const demo::balance&, const cleave::read_context&) {
  return 0;
}

int main() {
  cleave::command_bus commands;
  cleave::query_bus queries;
  commands.use<cleave::retry_on_conflict>();
  queries.use<cleave::validation>();
  commands.add(deposit);
  queries.add(balance);
  (void)commands.send(demo::deposit{"a", 1});
  (void)queries.ask(demo::balance{"a"});
}
