#include <cleave/store/upcasting.hpp>

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

}  // namespace cleave
