#pragma once
// A transparent string hash, so maps keyed by std::string are searched with a string_view
// without building a string.

#include <cstddef>
#include <functional>
#include <string_view>

namespace cleave::detail {

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

}  // namespace cleave::detail
