// expect: this behavior is declared for commands only: add it to the command bus
#include "messages.hpp"

int main() {
  cleave::query_bus queries;
  queries.use<cleave::retry_on_conflict>();
}
