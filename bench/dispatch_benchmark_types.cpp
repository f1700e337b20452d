#include "dispatch_benchmark_types.hpp"

#include <array>
#include <cstdint>
#include <string_view>
#include <utility>

namespace bench {

// 1,000 distinct command types, each with its own wire name.
template <int N>
struct numbered {
  std::int64_t amount = 0;
  using response = std::int64_t;
};
template <int N>
struct numbered_name {
  static constexpr auto text = [] {
    std::array<char, 16> s{'b', 'e', 'n', 'c', 'h', '.', 'n'};
    int digits = 7;
    for (int d = 1000; d > 0; d /= 10)
      s[static_cast<std::size_t>(digits++)] = static_cast<char>('0' + (N / d) % 10);
    return s;
  }();
};
template <int N>
constexpr auto cleave_describe(cleave::tag<numbered<N>>) {
  return cleave::detail::make_descriptor<cleave::message_kind::command, numbered<N>>(
      std::string_view(numbered_name<N>::text.data()), "numbered",
      cleave::field<numbered<N>, std::int64_t>{"amount", &numbered<N>::amount});
}

template <int N>
[[gnu::noinline]] void add_numbered(cleave::command_bus& commands) {
  commands.add([](const numbered<N>& c) -> cleave::result<std::int64_t> { return c.amount; });
}

template <std::size_t... I>
void add_all(cleave::command_bus& commands, std::index_sequence<I...>) {
  (add_numbered<static_cast<int>(I)>(commands), ...);
}

void add_999_command_types(cleave::command_bus& commands) {
  add_all(commands, std::make_index_sequence<999>{});
}

}  // namespace bench
