// expect: this query declares no response type: add `using response = T;`
#include "messages.hpp"

int main() {
  cleave::query_bus queries;
  (void)queries.ask(demo::unanswered{"a"});
}
