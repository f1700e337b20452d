#pragma once
// What both backends do alike when reading the log.

#include <span>
#include <string>

#include <cleave/core/json.hpp>

namespace cleave::detail {

// The event types a read is limited to, as the JSON array the backends' SQL takes apart.
inline std::string json_array_of(std::span<const std::string> types) {
  json out = json::array();
  for (const auto& type : types) out.push_back(type);
  return out.dump();
}

}  // namespace cleave::detail
