#include <cleave/store/upcasting.hpp>

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace cleave {

upcasters& upcasters::add(std::string from, std::string to, rewrite fn) {
  if (steps_.contains(from))
    throw std::logic_error(fmt::format("event type '{}' already has an upcaster", from));
  steps_.emplace(std::move(from), step{std::move(to), std::move(fn)});
  return *this;
}

void upcasters::apply(std::string& type, json& payload) const {
  event_payload held(std::move(payload));
  apply(type, held);
  payload = std::move(held.value());
}

void upcasters::apply(std::string& type, event_payload& payload) const {
  // Bounded, so a cycle in the registered rewrites cannot hang a reader.
  for (std::size_t hops = 0; hops <= steps_.size(); ++hops) {
    auto it = steps_.find(type);
    if (it == steps_.end()) return;
    if (it->second.fn) it->second.fn(payload.value());
    type = it->second.to;
  }
  throw error_exception({errc::internal, fmt::format("upcasters for '{}' form a cycle", type), {}});
}

std::vector<std::string> upcasters::stored_as(std::span<const std::string> types) const {
  std::vector<std::string> out(types.begin(), types.end());
  for (const auto& [from, first] : steps_) {
    const std::string* type = &first.to;
    for (std::size_t hops = 0; hops <= steps_.size(); ++hops) {
      auto it = steps_.find(*type);
      if (it == steps_.end()) break;
      type = &it->second.to;
    }
    if (std::find(types.begin(), types.end(), *type) != types.end()) out.push_back(from);
  }
  return out;
}

}  // namespace cleave
