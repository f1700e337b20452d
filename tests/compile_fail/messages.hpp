#pragma once
// Messages shared by the compile-fail cases.
#include <cleave/cleave.hpp>

namespace demo {
struct deposit {
  std::string account;
  int amount = 0;
};
CLEAVE_COMMAND(deposit, "demo.deposit", account, amount)

struct balance {
  std::string account;
  using response = int;
};
CLEAVE_QUERY(balance, "demo.balance", account)

struct deposited {
  std::string account;
};
CLEAVE_EVENT(deposited, "demo.deposited", account)

struct unanswered {
  std::string account;
};
CLEAVE_QUERY(unanswered, "demo.unanswered", account)
}  // namespace demo
