#pragma once
// What a handler's signature says: its message type, its context type, its return type.

#include <cstddef>
#include <functional>
#include <tuple>
#include <type_traits>

namespace cleave::detail {

template <class R, class... A>
struct signature {
  static constexpr bool known = true;
  static constexpr std::size_t arity = sizeof...(A);
  using return_type = R;
  using args = std::tuple<A...>;
};

template <class F, class = void>
struct callable_signature {
  static constexpr bool known = false;  // overloaded or generic (auto parameters)
  static constexpr std::size_t arity = 0;
  using return_type = void;
  using args = std::tuple<>;
};
template <class R, class... A>
struct callable_signature<R (*)(A...)> : signature<R, A...> {};
template <class R, class... A>
struct callable_signature<R (*)(A...) noexcept> : signature<R, A...> {};
template <class R, class... A>
struct callable_signature<R(A...)> : signature<R, A...> {};
template <class R, class... A>
struct callable_signature<R(A...) noexcept> : signature<R, A...> {};

template <class M>
struct member_signature;
template <class C, class R, class... A>
struct member_signature<R (C::*)(A...)> : signature<R, A...> {};
template <class C, class R, class... A>
struct member_signature<R (C::*)(A...) const> : signature<R, A...> {};
template <class C, class R, class... A>
struct member_signature<R (C::*)(A...) noexcept> : signature<R, A...> {};
template <class C, class R, class... A>
struct member_signature<R (C::*)(A...) const noexcept> : signature<R, A...> {};

template <class F>
struct callable_signature<F, std::void_t<decltype(&F::operator())>>
    : member_signature<decltype(&F::operator())> {};

template <class F, std::size_t I>
using arg_t = std::tuple_element_t<I, typename callable_signature<F>::args>;

// The decayed type of the handler's first parameter (the message), or void.
template <class F>
struct message_param {
  using type = void;
};
template <class F>
  requires(callable_signature<F>::known && callable_signature<F>::arity >= 1)
struct message_param<F> {
  using type = std::remove_cvref_t<arg_t<F, 0>>;
};

// The handler's second parameter (the context) as written, or void when it takes none.
template <class F>
struct context_param {
  using type = void;
};
template <class F>
  requires(callable_signature<F>::known && callable_signature<F>::arity == 2)
struct context_param<F> {
  using type = arg_t<F, 1>;
};

}  // namespace cleave::detail
