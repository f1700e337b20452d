#include <cleave/core/position.hpp>

#include <charconv>

#include <fmt/format.h>

namespace cleave {

std::string position_token::to_string() const {
  if (empty()) return {};
  return fmt::format("{:x}.{:x}.{:x}", transaction_, position_, lsn_);
}

result<position_token> position_token::parse(std::string_view text) {
  if (text.empty()) return position_token{};
  std::uint64_t parts[3] = {0, 0, 0};
  const char* p = text.data();
  const char* end = text.data() + text.size();
  for (int i = 0; i < 3; ++i) {
    auto [next, ec] = std::from_chars(p, end, parts[i], 16);
    const bool last = i == 2;
    if (ec != std::errc{} || next == p || (last ? next != end : (next == end || *next != '.')))
      return fail(errc::validation,
                  fmt::format("malformed position token '{}': expected three hex numbers "
                              "joined by '.', as returned by a command",
                              text.substr(0, 64)));
    p = last ? next : next + 1;
  }
  return position_token{parts[0], parts[1], parts[2]};
}

}  // namespace cleave
