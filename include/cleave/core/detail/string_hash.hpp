#pragma once
// String hashes: a transparent one, so maps keyed by std::string are searched with a string_view
// without building a string; a stable one, for what is recorded.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

namespace cleave::detail {

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

// FNV-1a, 64 bits: the same in every process and build (std::hash is not), for what is recorded
// in a database.
constexpr std::uint64_t stable_hash(std::string_view s) noexcept {
  std::uint64_t h = 14695981039346656037ull;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

}  // namespace cleave::detail
