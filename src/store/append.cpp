#include <cleave/store/detail/append.hpp>

#include <fmt/format.h>

namespace cleave::detail {

std::uint64_t next_stream_version(std::string_view stream, std::uint64_t current,
                                  std::optional<std::uint64_t> expected) {
  if (expected && *expected != current)
    throw error_exception(
        {errc::conflict,
         fmt::format("stream '{}' is at version {}, expected {}", stream, current, *expected),
         {}});
  return current + 1;
}

}  // namespace cleave::detail
