#pragma once
// Events evolve: upcasters turn old stored shapes and renamed types into current ones as they are
// read, so a rebuild from position 0 still works after the event types change.

#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/core/error.hpp>
#include <cleave/core/json.hpp>
#include <cleave/core/message.hpp>
#include <cleave/store/store.hpp>

namespace cleave {

// A set of rewrites keyed by the stored type name. Register before reading; reading is
// thread-safe.
class upcasters {
 public:
  using rewrite = std::function<void(json& payload)>;

  // Events stored as `from` are read as `to`, their payload passed through `fn` first (which may
  // be empty). `to` may itself have an upcaster: rewrites chain (v1 -> v2 -> v3).
  // Throws std::logic_error when `from` already has one.
  upcasters& add(std::string from, std::string to, rewrite fn = {});

  // Rewrites type and payload in place until no upcaster applies.
  void apply(std::string& type, json& payload) const;
  // The same for a stored payload, parsed only when a rewrite has to change it.
  void apply(std::string& type, event_payload& payload) const;
  // The stored type names read as one of `types`, `types` included: what a reader that handles
  // `types` must fetch from the log.
  std::vector<std::string> stored_as(std::span<const std::string> types) const;

 private:
  struct step {
    std::string to;
    rewrite fn;
  };
  std::map<std::string, step, std::less<>> steps_;
};

// Decodes a stored event into E after upcasting, tolerantly (defaults for missing members,
// unknown members ignored). A type that is not E after upcasting is errc::validation.
template <class E>
result<E> decode_event(const stored_event& stored, const upcasters* rewrites = nullptr) {
  static_assert(event<E>, "decode_event<E>: E must be declared with CLEAVE_EVENT");
  std::string type = stored.type;
  event_payload payload = stored.payload;
  if (rewrites) rewrites->apply(type, payload);
  if (type != info_of<E>().wire_name)
    return fail(errc::validation,
                "event '" + type + "' is not a '" + std::string(info_of<E>().wire_name) + "'");
  return payload.decode<E>(decode_mode::tolerant);
}

}  // namespace cleave
