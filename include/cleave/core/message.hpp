#pragma once
// Messages: plain structs declared with their kind, a stable wire name and their fields.
//
//   struct place_order { std::string order_id; std::vector<order_line> lines; };
//   CLEAVE_COMMAND(place_order, "shop.place_order", order_id, lines)
//
// Write the declaration in the namespace of the struct, after the struct. A command or query may
// say what its handler returns with a nested `using response = T;` (commands default to void).
// A message may declare `cleave::result<void> validate() const;`, run by the validation behavior.

#include <array>
#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <cleave/core/detail/for_each.hpp>
#include <cleave/core/error.hpp>

namespace cleave {

enum class message_kind { command, query, event, record };

// The stable lower-case name of a kind ("command", "query", "event", "record").
std::string_view to_string(message_kind kind) noexcept;

// An empty value that carries a type; the argument through which declarations are found (ADL).
template <class T>
struct tag {
  using type = T;
};

// One declared member of a message or record.
template <class Owner, class Member>
struct field {
  using owner_type = Owner;
  using value_type = Member;
  std::string_view name;
  Member Owner::*member;
};

// Everything a declaration says about T.
template <class T, message_kind Kind, class... Fields>
struct descriptor {
  static constexpr message_kind kind = Kind;
  std::string_view wire_name;  // empty for records
  std::string_view type_name;  // the C++ name as written in the declaration
  std::tuple<Fields...> fields;
};

// Runtime facts about a declared message type, one static instance per type.
struct message_info {
  std::string_view wire_name;
  std::string_view type_name;
  message_kind kind;
};

// Every command, query and event type declared in the program (by CLEAVE_COMMAND and friends),
// in no particular order. Complete once static initialization has finished.
const std::vector<const message_info*>& declared_messages();

template <class T>
concept described = requires { cleave_describe(tag<T>{}); };

template <described T>
constexpr auto describe() {
  return cleave_describe(tag<T>{});
}

// The descriptor as a constant, for code that needs its member pointers at compile time.
template <described T>
inline constexpr auto describe_static = cleave_describe(tag<T>{});

template <described T>
inline constexpr message_kind kind_of = decltype(cleave_describe(tag<T>{}))::kind;

template <class T>
concept command = described<T> && kind_of<T> == message_kind::command;
template <class T>
concept query = described<T> && kind_of<T> == message_kind::query;
template <class T>
concept event = described<T> && kind_of<T> == message_kind::event;
template <class T>
concept message = command<T> || query<T> || event<T>;

// The type a handler of T returns inside result<>: T::response if declared, else void.
template <class T>
struct response_of {
  using type = void;
};
template <class T>
  requires requires { typename T::response; }
struct response_of<T> {
  using type = typename T::response;
};
template <class T>
using response_t = typename response_of<T>::type;

// The one message_info of a declared message type.
template <message T>
const message_info& info_of() {
  static constexpr auto d = describe<T>();
  static const message_info info{d.wire_name, d.type_name, kind_of<T>};
  return info;
}

// Calls f(field) for each declared field of T, in declaration order.
template <described T, class F>
constexpr void for_each_field(F&& f) {
  std::apply([&](const auto&... each) { (f(each), ...); }, describe_static<T>.fields);
}

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};
// A field is required unless it is a std::optional.
template <class T>
inline constexpr bool is_required_v = !is_optional<T>::value;

// Enums travel as the names of their enumerators: CLEAVE_ENUM(color, red, green, blue).
template <class E>
concept described_enum = std::is_enum_v<E> && requires { cleave_enum_values(tag<E>{}); };

template <described_enum E>
constexpr auto enum_values() {
  return cleave_enum_values(tag<E>{});
}

// The enumerator's declared name, or an empty view for a value that has none.
template <described_enum E>
constexpr std::string_view enum_name(E value) {
  for (const auto& [v, name] : enum_values<E>())
    if (v == value) return name;
  return {};
}

namespace detail {
void declare_message(const message_info& info);

template <class T>
bool declare() {
  declare_message(info_of<T>());
  return true;
}

template <message_kind Kind, class T, class... M>
constexpr auto make_descriptor(std::string_view wire, std::string_view type, field<T, M>... f) {
  return descriptor<T, Kind, field<T, M>...>{wire, type, {f...}};
}

template <class>
inline constexpr bool always_false = false;
}  // namespace detail

}  // namespace cleave

#define CLEAVE_DETAIL_FIELD(T, f)      \
  ::cleave::field<T, decltype(T::f)> { \
    #f, &T::f                          \
  }
#define CLEAVE_DETAIL_ENUMERATOR(E, v) \
  std::pair<E, std::string_view> {     \
    E::v, #v                           \
  }

#define CLEAVE_DETAIL_DESCRIBE(kind, T, wire, ...)                                           \
  [[maybe_unused]] constexpr auto cleave_describe(::cleave::tag<T>) {                        \
    return ::cleave::detail::make_descriptor<kind, T>(                                       \
        wire, #T __VA_OPT__(, CLEAVE_DETAIL_FOR_EACH(CLEAVE_DETAIL_FIELD, T, __VA_ARGS__))); \
  }

#define CLEAVE_DETAIL_MESSAGE(kind, T, wire, ...)    \
  CLEAVE_DETAIL_DESCRIBE(kind, T, wire, __VA_ARGS__) \
  [[maybe_unused]] inline const bool cleave_declared_##T = ::cleave::detail::declare<T>();

// Declares struct T as a command with wire name `wire` and the listed fields.
#define CLEAVE_COMMAND(T, wire, ...) \
  CLEAVE_DETAIL_MESSAGE(::cleave::message_kind::command, T, wire, __VA_ARGS__)
// Declares struct T as a query with wire name `wire` and the listed fields.
#define CLEAVE_QUERY(T, wire, ...) \
  CLEAVE_DETAIL_MESSAGE(::cleave::message_kind::query, T, wire, __VA_ARGS__)
// Declares struct T as an event with wire name `wire` (its type in the log) and the listed fields.
#define CLEAVE_EVENT(T, wire, ...) \
  CLEAVE_DETAIL_MESSAGE(::cleave::message_kind::event, T, wire, __VA_ARGS__)
// Declares struct T as a plain data shape (nested in messages, rows of a query) with its fields.
#define CLEAVE_RECORD(T, ...) \
  CLEAVE_DETAIL_DESCRIBE(::cleave::message_kind::record, T, "", __VA_ARGS__)
// Declares enum E's enumerators, which travel as their names.
#define CLEAVE_ENUM(E, ...)                                                              \
  [[maybe_unused]] constexpr auto cleave_enum_values(::cleave::tag<E>) {                 \
    return std::array{CLEAVE_DETAIL_FOR_EACH(CLEAVE_DETAIL_ENUMERATOR, E, __VA_ARGS__)}; \
  }
