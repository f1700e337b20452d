// expect: send() takes a command, and this is an event
#include "messages.hpp"

int main() {
  cleave::command_bus commands;
  (void)commands.send(demo::deposited{"a"});
}
