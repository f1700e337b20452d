#pragma once
// function_ref: a non-owning, non-allocating reference to a callable (P0792), for callbacks that
// do not outlive the call they are passed to. (libstdc++ 12 has no std::function_ref.)

#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace cleave {

template <class Signature>
class function_ref;

template <class R, class... Args>
class function_ref<R(Args...)> {
 public:
  // NOLINTBEGIN(bugprone-forwarding-reference-overload): the constraint excludes function_ref
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, function_ref> &&
             std::is_invocable_r_v<R, F&, Args...>)
  function_ref(F&& f) noexcept  // NOLINT(google-explicit-constructor): it is a reference
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, Args... args) -> R {
          return std::invoke(*static_cast<std::remove_reference_t<F>*>(object),
                             std::forward<Args>(args)...);
        }) {}
  // NOLINTEND(bugprone-forwarding-reference-overload)

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

}  // namespace cleave
