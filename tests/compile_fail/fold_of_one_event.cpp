// expect: a fold takes (const std::vector<Event>&, cleave::view_context&)
#include <cleave/read/projection.hpp>

#include "messages.hpp"

int main() {
  cleave::projection p{"accounts"};
  p.fold([](const demo::deposited&, cleave::view_context&) {});
}
