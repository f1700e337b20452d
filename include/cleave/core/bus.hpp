#pragma once
// The command bus and the query bus: separate objects, separate pipelines.
//
//   cleave::command_bus commands{&store};
//   commands.use<cleave::validation>();
//   commands.add(place_order_handler);            // message type deduced from the first parameter
//   auto done = commands.send(place_order{...});  // result<sent<R>>: the response and a position
//
// Register handlers and behaviors before the first dispatch; after that, send/ask and the
// by-name calls are safe from any number of threads.

#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <cleave/core/behavior.hpp>
#include <cleave/core/context.hpp>
#include <cleave/core/detail/bus_core.hpp>
#include <cleave/core/detail/handler_traits.hpp>
#include <cleave/core/error.hpp>
#include <cleave/core/json.hpp>
#include <cleave/core/message.hpp>
#include <cleave/core/session.hpp>

namespace cleave {

// What a successful command returns: the handler's response and where its writes sit in the log.
template <class R>
struct sent {
  R value;
  position_token position;
};
template <>
struct sent<void> {
  position_token position;
};

namespace detail {

// Holds a handler's response between the innermost step and the caller.
template <class R>
struct response_slot {
  std::optional<R> value;
  void set(result<R>&& r) { value.emplace(std::move(*r)); }
  R take() { return std::move(*value); }
};
template <>
struct response_slot<void> {
  void set(result<void>&&) {}
};

template <class H>
using sig_of = callable_signature<H>;

// Calls a stored handler of type H with the message and (if it takes one) the context.
template <class H, class M, class R, class Ctx>
result<R> call_handler(void* handler, const M& message, Ctx& ctx) {
  H& h = *static_cast<H*>(handler);
  auto call = [&]() -> decltype(auto) {
    if constexpr (sig_of<H>::arity == 1)
      return std::invoke(h, message);
    else
      return std::invoke(h, message, ctx);
  };
  if constexpr (std::is_void_v<typename sig_of<H>::return_type>) {
    call();
    return {};
  } else {
    return result<R>(call());
  }
}

template <class M, class R, class Ctx>
using handler_fn = result<R> (*)(void*, const M&, Ctx&);

template <class H, class R>
inline constexpr bool returns_response =
    std::is_convertible_v<typename sig_of<H>::return_type, result<R>> ||
    (std::is_void_v<R> && std::is_void_v<typename sig_of<H>::return_type>);

// The typed parts of one command's run, for run_write.
struct command_step {
  function_ref<result<void>(write_context&)> run;  // runs the handler, keeps its response
  function_ref<json()> response;                   // the kept response as JSON
  function_ref<result<void>(const json&)> replay;  // keeps a remembered response instead
  function_ref<json()> message;                    // the command as JSON
  isolation level;                                 // of the command's transaction
};

// Runs a command in a write transaction from `source` (or with no store when null): commits on
// success, rolls back on failure or exception; exceptions become errors. A command with an id
// (request_meta::command_id) runs at most once: a retry gets the first outcome; the id used for
// another type or payload is errc::idempotency_key_reused. A transient failure
// (cleave::transient_error) runs the whole command again, up to 10 attempts in all, after a
// jittered pause doubling from 1–2 ms up to 32–64 ms, never past the request's deadline; after
// that it is errc::conflict.
// What a command's run left besides its response: its position, and whether it was a replay.
struct written {
  position_token position;
  std::optional<std::string> replay_of;  // see command_bus::send_json
};
result<void> run_write(session_source* source, const message_info& info, const request_meta& meta,
                       written& out, const command_step& step);
// Where the answer to a query was read (see query_bus::answer_positions): called in the answer's
// own read transaction, after its handler succeeded.
using answer_position_fn = std::function<position_token(std::string_view wire_name, read_session&)>;
// Runs a query body in a read-only transaction from `source` (or with no store when null). When
// `at` is given and `position` set, stores there the position the answer was read at.
result<void> run_read(session_source* source, const message_info& info, const request_meta& meta,
                      function_ref<result<void>(read_context&)> body,
                      const answer_position_fn* position = nullptr, position_token* at = nullptr);

}  // namespace detail

// The isolation of command C's transaction. Commands run serializable: a rule the handler checks
// by reading (count, then insert; read a balance, then update) holds under concurrent commands on
// every backend, and the bus retries what the database gives up to keep it so. A command may opt
// down inside its struct:
//
//   static constexpr auto isolation = cleave::isolation::read_committed;
//
// which is safe only when no decision of its handler depends on what it read: plain inserts keyed
// by the command (a unique key turns a duplicate into errc::conflict), or updates whose guard sits
// in the same statement (`update stock set n = n - $2 where id = $1 and n >= $2`).
template <command C>
constexpr isolation isolation_of() {
  if constexpr (requires { C::isolation; }) {
    static_assert(std::is_same_v<std::remove_cv_t<decltype(C::isolation)>, isolation>,
                  "a command's `isolation` member is a cleave::isolation: write "
                  "`static constexpr auto isolation = cleave::isolation::read_committed;`");
    return C::isolation;
  } else {
    return isolation::serializable;
  }
}

namespace detail {

// What both buses offer besides sending and asking: behaviors, their session source, and what
// they handle. The buses differ only in the kind of message and of context (a command's write
// transaction, a query's read-only one).
template <message_kind Kind>
class bus_surface {
 public:
  bus_surface(const bus_surface&) = delete;
  bus_surface& operator=(const bus_surface&) = delete;

  // Where transactions come from; null runs handlers without a store. Not owned.
  void set_source(session_source* source) noexcept { source_ = source; }

  // Adds a behavior around every handler of this bus (also those added later). Returns it.
  template <class B, class... Args>
  B& use(Args&&... args) {
    auto b = std::make_shared<B>(std::forward<Args>(args)...);
    use(b);
    return *b;
  }
  template <class B>
  void use(std::shared_ptr<B> b) {
    static_assert(behavior_type<B>,
                  "a behavior derives from cleave::behavior and declares "
                  "`static constexpr cleave::applies_to scope = ...;`");
    if constexpr (Kind == message_kind::command)
      static_assert(B::scope != applies_to::queries,
                    "this behavior is declared for queries only: add it to the query bus");
    else
      static_assert(B::scope != applies_to::commands,
                    "this behavior is declared for commands only: add it to the command bus");
    core_.use(std::move(b));
  }

  // Every message type with a handler here, in registration order.
  std::vector<const message_info*> handled() const { return core_.handled(); }
  // The same, with each type's operations (JSON Schemas of the message and of its response).
  std::vector<const message_ops*> handled_ops() const { return core_.handled_ops(); }
  // The operations of the message type with this wire name, or null when it has no handler.
  const message_ops* find(std::string_view wire_name) const {
    const auto* e = core_.find(wire_name);
    return e ? e->ops : nullptr;
  }
  bool handles(std::string_view wire_name) const { return core_.find(wire_name) != nullptr; }
  // Declared messages of this kind (CLEAVE_COMMAND / CLEAVE_QUERY anywhere in the program) that
  // have no handler here.
  std::vector<const message_info*> unhandled() const { return core_.unhandled(); }
  // An error listing every declared message of this kind without a handler; for a check at
  // start-up.
  [[nodiscard]] result<void> check_complete() const { return core_.check_complete(); }

 protected:
  explicit bus_surface(session_source* source) noexcept : source_(source) {}
  ~bus_surface() = default;

  bus_core core_{Kind};
  session_source* source_;
};

}  // namespace detail

// Dispatches commands to their handlers, each in one write transaction.
class command_bus : public detail::bus_surface<message_kind::command> {
 public:
  // source: where write transactions come from; null runs handlers without a store. Not owned.
  explicit command_bus(session_source* source = nullptr) : bus_surface(source) {}

  // Registers the handler of one command type, deduced from the handler's first parameter.
  // A handler is `result<R>(const C&, cleave::write_context&)` (the context may be left out),
  // a free function, lambda or function object; R is C::response, or void.
  // Throws std::logic_error when C or its wire name already has a handler.
  template <class F>
  void add(F&& handler);

  // Runs the command through the pipeline and its handler. Never throws: failures of every kind
  // come back as an error (no handler is errc::not_found naming the type).
  template <class C>
  [[nodiscard]] auto send(const C& command_message, const request_meta& meta = detail::no_meta);

  // Dispatch by wire name with a JSON body, decoded strictly (what HTTP and the CLI use).
  // An unknown name is errc::not_found; a body that does not decode is errc::validation.
  // When `replay_of` is given, it is set to the correlation id of the request that ran the
  // command when this send was answered with that request's remembered outcome (a replay),
  // success or refusal alike; else left empty.
  [[nodiscard]] result<json_outcome> send_json(std::string_view wire_name, const json& body,
                                               const request_meta& meta = detail::no_meta,
                                               std::optional<std::string>* replay_of = nullptr);

 private:
  template <command C>
  result<sent<response_t<C>>> dispatch(const C& command_message, const request_meta& meta,
                                       std::optional<std::string>* replay_of = nullptr);
  template <command C>
  static result<json_outcome> dispatch_json(void* bus, const json& body, const request_meta& meta,
                                            std::optional<std::string>* replay_of);
};

// Dispatches queries to their handlers, each in one read-only transaction.
class query_bus : public detail::bus_surface<message_kind::query> {
 public:
  // source: where read transactions come from; null runs handlers without a store. Not owned.
  explicit query_bus(session_source* source = nullptr) : bus_surface(source) {}

  // Registers the handler of one query type, deduced from the handler's first parameter.
  // A handler is `result<R>(const Q&, const cleave::read_context&)` (the context may be left
  // out), where R is Q::response. Throws std::logic_error when Q already has a handler.
  template <class F>
  void add(F&& handler);

  // Runs the query through the pipeline and its handler. Never throws.
  template <class Q>
  [[nodiscard]] auto ask(const Q& query_message, const request_meta& meta = detail::no_meta);

  // Dispatch by wire name with a JSON body, decoded strictly. The outcome's position is where
  // the answer was read, when answer_positions() says how to learn it; else empty.
  [[nodiscard]] result<json_outcome> ask_json(std::string_view wire_name, const json& body,
                                              const request_meta& meta = detail::no_meta);

  // How ask_json() learns the position an answer reflects: `f` runs in the answer's own read
  // transaction, after the handler (so the position never names a write the answer misses).
  // Set before the first query.
  void answer_positions(detail::answer_position_fn f) { answer_position_ = std::move(f); }

 private:
  template <query Q>
  result<response_t<Q>> dispatch(const Q& query_message, const request_meta& meta,
                                 position_token* at = nullptr);
  template <query Q>
  static result<json_outcome> dispatch_json(void* bus, const json& body, const request_meta& meta,
                                            std::optional<std::string>* replay_of);

  detail::answer_position_fn answer_position_;
};

// ---- implementation ----

template <class F>
void command_bus::add(F&& handler) {
  using H = std::decay_t<F>;
  using sig = detail::sig_of<H>;
  using C = typename detail::message_param<H>::type;
  using Ctx = std::remove_cvref_t<typename detail::context_param<H>::type>;
  if constexpr (!sig::known) {
    static_assert(detail::always_false<H>,
                  "cleave cannot read this handler's parameters (is it generic or overloaded?): "
                  "name the types, as in (const my_command&, cleave::write_context&)");
  } else if constexpr (query<C>) {
    static_assert(detail::always_false<H>,
                  "this handler takes a query: add it to the query bus, not the command bus");
  } else if constexpr (event<C>) {
    static_assert(detail::always_false<H>,
                  "this handler takes an event: events are handled by projections, not by the "
                  "command bus");
  } else if constexpr (sig::arity == 0 || sig::arity > 2 || !command<C>) {
    static_assert(detail::always_false<H>,
                  "this handler's signature fits no kind: a command handler is "
                  "result<R>(const C&, cleave::write_context&) with C declared by CLEAVE_COMMAND; "
                  "a query handler is result<R>(const Q&, const cleave::read_context&)");
  } else if constexpr (sig::arity == 2 && !std::is_same_v<Ctx, write_context>) {
    static_assert(detail::always_false<H>,
                  "a command handler's second parameter is cleave::write_context&");
  } else if constexpr (!detail::returns_response<H, response_t<C>>) {
    static_assert(
        detail::always_false<H>,
        "this handler's return type does not match its command's response: return "
        "cleave::result<R> where R is the command's `using response = R;` (void if none)");
  } else {
    using R = response_t<C>;
    detail::handler_fn<C, R, write_context> fn = &detail::call_handler<H, C, R, write_context>;
    core_.add(
        detail::type_id<C>(), detail::ops_of<C>(),
        detail::bus_core::handler_ptr(new H(std::forward<F>(handler)), &detail::delete_handler<H>),
        reinterpret_cast<detail::bus_core::erased_fn>(fn), &command_bus::dispatch_json<C>);
  }
}

template <class C>
auto command_bus::send(const C& command_message, const request_meta& meta) {
  if constexpr (query<C>) {
    static_assert(detail::always_false<C>,
                  "send() takes a command, and this is a query: ask it on the query bus");
  } else if constexpr (event<C>) {
    static_assert(detail::always_false<C>,
                  "send() takes a command, and this is an event: a command handler emits events "
                  "with ctx.emit(e), and projections handle them");
  } else if constexpr (!command<C>) {
    static_assert(
        detail::always_false<C>,
        "send() takes a command: declare it with CLEAVE_COMMAND(type, \"name\", fields...)");
  } else {
    return dispatch(command_message, meta);
  }
}

template <command C>
result<sent<response_t<C>>> command_bus::dispatch(const C& command_message,
                                                  const request_meta& meta,
                                                  std::optional<std::string>* replay_of) {
  using R = response_t<C>;
  const auto* e = core_.find(detail::type_id<C>());
  if (!e) return std::unexpected(detail::no_handler(info_of<C>()));
  auto fn = reinterpret_cast<detail::handler_fn<C, R, write_context>>(e->invoke);
  if (!source_ && core_.direct()) {
    // Nothing runs around the handler and there is no transaction: call it straight away.
    try {
      write_context ctx(nullptr, meta);
      auto r = fn(e->handler.get(), command_message, ctx);
      if (!r) return std::unexpected(std::move(r.error()));
      if constexpr (std::is_void_v<R>) {
        return sent<void>{};
      } else {
        return sent<R>{std::move(*r), {}};
      }
    } catch (...) {
      return std::unexpected(detail::error_from_current_exception(info_of<C>(), meta));
    }
  }
  detail::response_slot<R> response;
  detail::written done;
  auto body = [&](write_context& ctx) -> result<void> {
    auto r = fn(e->handler.get(), command_message, ctx);
    if (!r) return std::unexpected(std::move(r.error()));
    response.set(std::move(r));
    return {};
  };
  auto encode = [&]() -> json {
    if constexpr (std::is_void_v<R>) {
      return json(nullptr);
    } else {
      return to_json(*response.value);
    }
  };
  auto replay = [&](const json& j) -> result<void> {
    if constexpr (!std::is_void_v<R>) {
      detail::json_decoder decoder(decode_mode::tolerant);
      decoder.read(j, response.value.emplace());
      if (!decoder.ok()) return std::unexpected(decoder.take_error());
    }
    return {};
  };
  auto message = [&]() -> json { return to_json(command_message); };
  const detail::command_step step{body, encode, replay, message, isolation_of<C>()};
  auto innermost = [&](const request_meta& m) -> result<void> {
    return detail::run_write(source_, info_of<C>(), m, done, step);
  };
  auto outcome =
      core_.run(message_ref(&command_message, detail::ops_of<C>(), e->slot), meta, innermost);
  if (replay_of) *replay_of = done.replay_of;
  if (!outcome) return std::unexpected(std::move(outcome.error()));
  if constexpr (std::is_void_v<R>) {
    return sent<void>{done.position};
  } else {
    return sent<R>{response.take(), done.position};
  }
}

template <command C>
result<json_outcome> command_bus::dispatch_json(void* bus, const json& body,
                                                const request_meta& meta,
                                                std::optional<std::string>* replay_of) {
  auto message = from_json<C>(body);
  if (!message) return std::unexpected(std::move(message.error()));
  auto r = static_cast<command_bus*>(bus)->dispatch(*message, meta, replay_of);
  if (!r) return std::unexpected(std::move(r.error()));
  if constexpr (std::is_void_v<response_t<C>>) {
    return json_outcome{json(nullptr), r->position};
  } else {
    return json_outcome{to_json(r->value), r->position};
  }
}

template <class F>
void query_bus::add(F&& handler) {
  using H = std::decay_t<F>;
  using sig = detail::sig_of<H>;
  using Q = typename detail::message_param<H>::type;
  using Ctx = std::remove_cvref_t<typename detail::context_param<H>::type>;
  if constexpr (!sig::known) {
    static_assert(detail::always_false<H>,
                  "cleave cannot read this handler's parameters (is it generic or overloaded?): "
                  "name the types, as in (const my_query&, const cleave::read_context&)");
  } else if constexpr (sig::arity == 2 && std::is_same_v<Ctx, write_context>) {
    static_assert(detail::always_false<H>,
                  "a query handler receives `const cleave::read_context&`, not a write_context: "
                  "queries cannot write");
  } else if constexpr (command<Q>) {
    static_assert(detail::always_false<H>,
                  "this handler takes a command: add it to the command bus, not the query bus");
  } else if constexpr (event<Q>) {
    static_assert(detail::always_false<H>,
                  "this handler takes an event: events are handled by projections, not by the "
                  "query bus");
  } else if constexpr (sig::arity == 0 || sig::arity > 2 || !query<Q>) {
    static_assert(detail::always_false<H>,
                  "this handler's signature fits no kind: a query handler is "
                  "result<R>(const Q&, const cleave::read_context&) with Q declared by "
                  "CLEAVE_QUERY; a command handler is result<R>(const C&, cleave::write_context&)");
  } else if constexpr (sig::arity == 2 && !std::is_same_v<Ctx, read_context>) {
    static_assert(detail::always_false<H>,
                  "a query handler's second parameter is `const cleave::read_context&`");
  } else if constexpr (std::is_void_v<response_t<Q>>) {
    static_assert(detail::always_false<H>,
                  "this query declares no response type: add `using response = T;` inside the "
                  "query struct, naming what its handler returns");
  } else if constexpr (!detail::returns_response<H, response_t<Q>>) {
    static_assert(detail::always_false<H>,
                  "this handler's return type does not match its query's response: return "
                  "cleave::result<R> where R is the query's `using response = R;`");
  } else {
    using R = response_t<Q>;
    detail::handler_fn<Q, R, read_context> fn = &detail::call_handler<H, Q, R, read_context>;
    core_.add(
        detail::type_id<Q>(), detail::ops_of<Q>(),
        detail::bus_core::handler_ptr(new H(std::forward<F>(handler)), &detail::delete_handler<H>),
        reinterpret_cast<detail::bus_core::erased_fn>(fn), &query_bus::dispatch_json<Q>);
  }
}

template <class Q>
auto query_bus::ask(const Q& query_message, const request_meta& meta) {
  if constexpr (command<Q>) {
    static_assert(detail::always_false<Q>,
                  "ask() takes a query, and this is a command: send it on the command bus");
  } else if constexpr (event<Q>) {
    static_assert(detail::always_false<Q>,
                  "ask() takes a query, and this is an event: events are not asked");
  } else if constexpr (!query<Q>) {
    static_assert(detail::always_false<Q>,
                  "ask() takes a query: declare it with CLEAVE_QUERY(type, \"name\", fields...)");
  } else if constexpr (std::is_void_v<response_t<Q>>) {
    static_assert(detail::always_false<Q>,
                  "this query declares no response type: add `using response = T;` inside the "
                  "query struct, naming what its handler returns");
  } else {
    return dispatch(query_message, meta);
  }
}

template <query Q>
result<response_t<Q>> query_bus::dispatch(const Q& query_message, const request_meta& meta,
                                          position_token* at) {
  using R = response_t<Q>;
  const auto* e = core_.find(detail::type_id<Q>());
  if (!e) return std::unexpected(detail::no_handler(info_of<Q>()));
  auto fn = reinterpret_cast<detail::handler_fn<Q, R, read_context>>(e->invoke);
  if (!source_ && core_.direct()) {
    try {
      read_context ctx(nullptr, meta);
      return fn(e->handler.get(), query_message, ctx);
    } catch (...) {
      return std::unexpected(detail::error_from_current_exception(info_of<Q>(), meta));
    }
  }
  detail::response_slot<R> response;
  auto body = [&](read_context& ctx) -> result<void> {
    auto r = fn(e->handler.get(), query_message, ctx);
    if (!r) return std::unexpected(std::move(r.error()));
    response.set(std::move(r));
    return {};
  };
  auto innermost = [&](const request_meta& m) -> result<void> {
    return detail::run_read(source_, info_of<Q>(), m, body,
                            answer_position_ ? &answer_position_ : nullptr, at);
  };
  auto outcome =
      core_.run(message_ref(&query_message, detail::ops_of<Q>(), e->slot), meta, innermost);
  if (!outcome) return std::unexpected(std::move(outcome.error()));
  return response.take();
}

template <query Q>
result<json_outcome> query_bus::dispatch_json(void* bus, const json& body, const request_meta& meta,
                                              std::optional<std::string>*) {
  auto message = from_json<Q>(body);
  if (!message) return std::unexpected(std::move(message.error()));
  position_token at;
  auto r = static_cast<query_bus*>(bus)->dispatch(*message, meta, &at);
  if (!r) return std::unexpected(std::move(r.error()));
  return json_outcome{to_json(*r), at};
}

}  // namespace cleave
