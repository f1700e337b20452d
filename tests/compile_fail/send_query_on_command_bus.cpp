// expect: send() takes a command, and this is a query: ask it on the query bus
#include "messages.hpp"

int main() {
  cleave::command_bus commands;
  (void)commands.send(demo::balance{"a"});
}
