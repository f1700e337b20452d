// expect: this handler's signature fits no kind
#include "messages.hpp"

cleave::result<void> not_a_handler(int, double) {
  return {};
}

int main() {
  cleave::command_bus commands;
  commands.add(not_a_handler);
}
