// expect: a query handler receives `const cleave::read_context&`, not a write_context: queries
// cannot write
#include "messages.hpp"

cleave::result<int> balance(const demo::balance&, cleave::write_context& ctx) {
  ctx.exec("update accounts set amount = 0");
  return 0;
}

int main() {
  cleave::query_bus queries;
  queries.add(balance);
}
