#pragma once
// The machinery both buses share: the handler table (by type and by wire name), the behaviors,
// and the pipeline runner. Not for direct use.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <cleave/core/behavior.hpp>
#include <cleave/core/detail/string_hash.hpp>
#include <cleave/core/error.hpp>
#include <cleave/core/json.hpp>
#include <cleave/core/message.hpp>
#include <cleave/core/position.hpp>

namespace cleave {

// The outcome of a dispatch by wire name: the handler's response as JSON (null for none) and the
// position token of what the command wrote (empty for queries and for no store).
struct json_outcome {
  json result;
  position_token position;
};

namespace detail {

inline const request_meta no_meta{};

std::size_t next_type_id() noexcept;

// A dense number per C++ type, the same for every bus.
template <class T>
std::size_t type_id() noexcept {
  static const std::size_t id = next_type_id();
  return id;
}

template <class T>
result<void> validate_of(const void* m) {
  if constexpr (requires(const T& t) {
                  { t.validate() } -> std::convertible_to<result<void>>;
                }) {
    return static_cast<const T*>(m)->validate();
  } else {
    return {};
  }
}

template <class T>
json to_json_of(const void* m) {
  return to_json(*static_cast<const T*>(m));
}

template <class H>
void delete_handler(void* h) {
  delete static_cast<H*>(h);
}

// Whether query T's answers may be reused while the data they were read from is unchanged. A
// query opts in inside its struct:
//
//   static constexpr bool cache_answers = true;
//
// which is right only when its answer depends on nothing but its members, the caller's token and
// what its handler reads through its read_context: not the clock, not a memory view. The HTTP
// server then answers a plain GET of it (no consistency headers, no `Cache-Control: no-cache`)
// from the last answer it gave to the same target and token, while the store's data_version is
// the one that answer was read at; a cached answer skips the handler and the bus's behaviors.
template <class T>
constexpr bool cache_answers_of() {
  if constexpr (requires { T::cache_answers; }) {
    static_assert(std::is_same_v<std::remove_cv_t<decltype(T::cache_answers)>, bool>,
                  "a query's `cache_answers` member is a bool: write "
                  "`static constexpr bool cache_answers = true;`");
    return T::cache_answers;
  } else {
    return false;
  }
}

template <class T>
const message_ops& ops_of() {
  static const message_ops ops{&info_of<T>(),
                               &validate_of<T>,
                               &to_json_of<T>,
                               &json_schema<T>,
                               &json_schema<response_t<T>>,
                               cache_answers_of<T>()};
  return ops;
}

class bus_core {
 public:
  using erased_fn = void (*)();
  // replay_of: see command_bus::send_json (ignored for queries).
  using json_fn = result<json_outcome> (*)(void* bus, const json& body, const request_meta& meta,
                                           std::optional<std::string>* replay_of);

  using handler_ptr = std::unique_ptr<void, void (*)(void*)>;

  struct entry {
    const message_ops* ops;
    handler_ptr handler;
    erased_fn invoke;  // the typed trampoline, cast back by the bus that stored it
    json_fn invoke_json;
    std::size_t slot;
  };

  explicit bus_core(message_kind kind) : kind_(kind) {}

  // Throws std::logic_error when the type or its wire name already has a handler.
  void add(std::size_t type, const message_ops& ops, handler_ptr handler, erased_fn invoke,
           json_fn invoke_json);
  void use(std::shared_ptr<behavior> b);

  const entry* find(std::size_t type) const noexcept {
    return type < by_type_.size() && by_type_[type] >= 0 ? &entries_[by_type_[type]] : nullptr;
  }
  const entry* find(std::string_view wire_name) const noexcept;

  // True when no behavior runs around the handlers.
  bool direct() const noexcept { return pipeline_.empty(); }

  // Runs the behaviors around `innermost`, which gets the request_meta the last behavior passed
  // on; any exception becomes an error here.
  result<void> run(const message_ref& message, const request_meta& meta,
                   function_ref<result<void>(const request_meta&)> innermost) const;

  std::vector<const message_info*> handled() const;
  std::vector<const message_ops*> handled_ops() const;
  std::vector<const message_info*> unhandled() const;
  result<void> check_complete() const;

 private:
  message_kind kind_;
  std::vector<entry> entries_;
  std::vector<std::int32_t> by_type_;
  std::unordered_map<std::string, std::size_t, string_hash, std::equal_to<>> by_name_;
  std::vector<std::shared_ptr<behavior>> behaviors_;  // owns them
  std::vector<behavior*> pipeline_;                   // the same, for the hot path
};

// Turns whatever a handler body throws into an error.
error error_from_current_exception(const message_info& info, const request_meta& meta);

error no_handler(const message_info& info);

}  // namespace detail
}  // namespace cleave
