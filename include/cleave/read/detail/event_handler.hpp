#pragma once
// The per-event handlers of projections and memory views, alike but for what they write to.

#include <string>
#include <type_traits>
#include <utility>

#include <cleave/core/detail/handler_traits.hpp>
#include <cleave/core/error.hpp>
#include <cleave/store/store.hpp>

namespace cleave::detail {

// Adds `handler(const E&, Target&)`, E a CLEAVE_EVENT, to `handlers` under E's wire name, as a
// handler of stored payloads: each is decoded as E leniently (members it does not know are
// ignored), and one that does not decode throws error_exception.
template <class Target, class Handlers, class F>
void add_event_handler(Handlers& handlers, F&& handler) {
  using H = std::decay_t<F>;
  using E = typename message_param<H>::type;
  static_assert(event<E>,
                "an event handler takes (const Event&, Target&) — a projection's Target is "
                "cleave::view_context, a memory view's its State — with the event declared by "
                "CLEAVE_EVENT");
  handlers[std::string(info_of<E>().wire_name)] =
      [h = H(std::forward<F>(handler))](const event_payload& payload, Target& target) mutable {
        auto e = payload.template decode<E>(decode_mode::tolerant);
        if (!e) throw error_exception(e.error());
        h(*e, target);
      };
}

}  // namespace cleave::detail
