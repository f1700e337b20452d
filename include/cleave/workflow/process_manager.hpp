#pragma once
// Process managers: react to events by sending commands, remembering what they need per instance.
//
//   struct payment { std::string order_id; bool paid = false; };
//   CLEAVE_RECORD(payment, order_id, paid)
//
//   cleave::process_manager<payment> payments{"order_payments"};
//   payments
//       .on(&order_placed::order_id,   // the instance an event belongs to
//           [](const order_placed& e, payment& s, cleave::process_context& p) {
//             s.order_id = e.order_id;
//             p.schedule(std::chrono::minutes(15), cancel_order{e.order_id}, "timeout");
//           })
//       .on(&order_paid::order_id, [](const order_paid&, payment&, cleave::process_context& p) {
//         p.cancel_schedule("timeout");
//         p.complete();
//       })
//       .on_rejected<cancel_order>(
//           [](const cancel_order&, const cleave::error&, payment&, cleave::process_context& p) {
//             p.complete();  // paid meanwhile
//           });
//   app.add_process_manager(payments);
//
// A process manager is an async projection (its checkpoint, its batches, its dead letters), whose
// view is the state of its instances: `{view}(instance, state, updated_ms)`, the state as JSON.
// What a handler changes — the state, the commands it sends and schedules, the schedules it
// cancels — commits with the manager's checkpoint in one transaction. The commands leave through
// the scheduler (cleave/workflow/scheduler.hpp), each with an id derived from the manager's name
// and the event's position, so handling an event again after a crash can send nothing twice.
// A manager registered for the first time starts at the log's head: it reacts to events
// committed from then on, not to history (handle_history() for the whole log).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <cleave/core/context.hpp>
#include <cleave/core/detail/handler_traits.hpp>
#include <cleave/core/detail/schedules.hpp>
#include <cleave/core/json.hpp>
#include <cleave/read/projection.hpp>
#include <cleave/workflow/scheduler.hpp>

namespace cleave {

// What a process manager's handler gets besides the event and its instance's state.
class process_context {
 public:
  // What the manager is and what its clock says; shared by its handlers.
  struct manager_info {
    std::string name;
    principal runs_as;
    std::function<std::chrono::system_clock::time_point()> now;
  };

  process_context(write_session& tx, const manager_info& manager, std::string_view instance,
                  std::string id_base, const stored_event* event, bool is_new) noexcept
      : tx_(tx),
        manager_(manager),
        instance_(instance),
        id_base_(std::move(id_base)),
        event_(event),
        is_new_(is_new) {}

  // The instance handled (what the handler's key names).
  const std::string& instance() const noexcept { return instance_; }
  // No state was stored for it before this call.
  bool is_new() const noexcept { return is_new_; }
  // The manager's clock (the system clock unless a test set another).
  std::chrono::system_clock::time_point now() const { return manager_.now(); }
  // The event handled; null in an on_rejected handler.
  const stored_event* event() const noexcept { return event_; }

  // Sends `command` once this transaction commits, as the manager's principal.
  template <class C>
  void send(const C& command) {
    schedule(now(), command);
  }
  // Schedules `command` at `when` (or `after` from now()); `key` (the instance's own: keys are
  // scoped to the manager) names it for cancel_schedule(), replacing a pending one with that key.
  // Returns the key.
  template <class C>
  std::string schedule(std::chrono::system_clock::time_point when, const C& command,
                       std::string_view key = {}) {
    static_assert(cleave::command<C>,
                  "schedule() and send() take a command declared with CLEAVE_COMMAND");
    return add(detail::unix_ms_of(when), info_of<C>().wire_name, to_json(command), key);
  }
  template <class C, class Rep, class Period>
  std::string schedule(std::chrono::duration<Rep, Period> after, const C& command,
                       std::string_view key = {}) {
    return schedule(now() + std::chrono::duration_cast<std::chrono::system_clock::duration>(after),
                    command, key);
  }
  // Cancels the manager's pending schedule `key` in this transaction; false when none is pending.
  // Once this commits the command is never sent.
  bool cancel_schedule(std::string_view key);
  // Ends the instance: its state is deleted when the handler returns (a later event for it starts
  // a new one).
  void complete() noexcept { completed_ = true; }
  bool completed() const noexcept { return completed_; }

  // Reads the database the manager runs in (its own table is `{view}`).
  template <class T, class... Args>
  result<T> one(std::string_view sql, const Args&... args) const {
    return read_context(&tx_, cleave::detail::no_meta).one<T>(sql, args...);
  }

 private:
  std::string add(std::int64_t due_ms, std::string_view wire_name, const json& payload,
                  std::string_view key);
  std::string scoped(std::string_view key) const;

  write_session& tx_;
  const manager_info& manager_;
  std::string instance_;
  std::string id_base_;
  const stored_event* event_;
  bool is_new_;
  bool completed_ = false;
  int sent_ = 0;
};

namespace detail {

// The state of `instance` in the manager's table as JSON text; nullopt when it has none.
std::optional<std::string> load_process_state(write_session& tx, std::string_view table,
                                              std::string_view instance);
// Stores it (or deletes it, for a completed instance).
void save_process_state(write_session& tx, std::string_view table, std::string_view instance,
                        const std::string* state_json, std::int64_t now_ms);
// The table of a manager's states.
inline constexpr std::string_view process_state_schema =
    "create table {view}(instance text primary key, state text not null, updated_ms bigint not "
    "null)";

// Loads the state of `instance`, runs `body(state, context)`, and stores what it left.
template <class State, class Body>
void run_instance(write_session& tx, std::string_view table,
                  const process_context::manager_info& manager, std::string_view instance,
                  std::string id_base, const stored_event* event, Body&& body) {
  auto stored = load_process_state(tx, table, instance);
  State state{};
  if (stored) {
    auto decoded = from_json_text<State>(*stored, decode_mode::tolerant);
    if (!decoded) throw error_exception(decoded.error());
    state = std::move(*decoded);
  }
  process_context ctx(tx, manager, instance, std::move(id_base), event, !stored);
  body(state, ctx);
  const auto now = unix_ms_of(manager.now());
  if (ctx.completed()) {
    save_process_state(tx, table, instance, nullptr, now);
  } else {
    const std::string text = to_json(state).dump();
    save_process_state(tx, table, instance, &text, now);
  }
}

}  // namespace detail

template <class State>
class process_manager {
  static_assert(described<State>, "a process manager's state is a CLEAVE_RECORD");

 public:
  // `name` identifies the manager: its checkpoint, its table, its commands' ids and principal
  // ("process:<name>").
  explicit process_manager(std::string name)
      : info_(std::make_shared<process_context::manager_info>()),
        refusals_(std::make_shared<refusal_map>()),
        projection_(name) {
    info_->name = std::move(name);
    info_->runs_as.subject = "process:" + info_->name;
    info_->now = [] { return std::chrono::system_clock::now(); };
    projection_.schema(std::string(detail::process_state_schema))
        .not_rebuildable(
            "it is a process manager: handling its events again would send their commands again")
        .from_now_on()
        .async();
  }

  // Handles event E for the instance `key_of(e)` names (a member pointer such as
  // `&order_placed::order_id`, or a function of the event): `handler(const E&, State&,
  // cleave::process_context&)`. The state is State{} for an instance not seen before.
  template <class KeyOf, class F>
  process_manager& on(KeyOf key_of, F handler) {
    using E = std::remove_cvref_t<detail::arg_t<std::decay_t<F>, 0>>;
    static_assert(event<E>,
                  "a process manager's handler takes (const Event&, State&, "
                  "cleave::process_context&), the event declared by CLEAVE_EVENT");
    projection_.on([info = info_, key_of, handler](const E& e, view_context& v) mutable {
      const std::string instance{std::invoke(key_of, e)};
      const auto& stored = v.event();
      detail::run_instance<State>(v.session(), v.table(), *info, instance,
                                  info->name + "@" + std::to_string(stored.position.position()),
                                  &stored,
                                  [&](State& s, process_context& ctx) { handler(e, s, ctx); });
    });
    return *this;
  }

  // Handles a refusal (errc rejected, validation, not_found) of a command C this
  // manager sent: `handler(const C&, const cleave::error&, State&, cleave::process_context&)`,
  // in one transaction with taking the schedule away. A refused command without a handler is
  // kept in the schedule table as failed (`schedule list`).
  template <class C, class F>
  process_manager& on_rejected(F handler) {
    static_assert(cleave::command<C>,
                  "on_rejected<C>: C is a command declared with CLEAVE_COMMAND");
    (*refusals_)[std::string(info_of<C>().wire_name)] =
        [info = info_, handler](write_session& tx, const scheduled_command& row,
                                const error& why) mutable {
          auto command = from_json_text<C>(row.payload, decode_mode::tolerant);
          if (!command) throw error_exception(command.error());
          detail::run_instance<State>(
              tx, info->name, *info, row.instance, row.id + "/r", nullptr,
              [&](State& s, process_context& ctx) { handler(*command, why, s, ctx); });
        };
    return *this;
  }

  // Handle the log from its beginning when first registered (by default a manager starts at the
  // log's head: its commands would otherwise act on every past event).
  process_manager& handle_history() {
    projection_.from_now_on(false);
    return *this;
  }

  // The roles its commands are sent with (for cleave::authorization).
  process_manager& roles(std::vector<std::string> r) {
    info_->runs_as.roles = std::move(r);
    return *this;
  }
  // The clock its handlers' now() and relative schedules read (a test's, say).
  process_manager& clock(std::function<std::chrono::system_clock::time_point()> now) {
    info_->now = std::move(now);
    return *this;
  }

  const std::string& name() const noexcept { return info_->name; }
  // Who its commands run as: "process:<name>", with roles().
  const principal& runs_as() const noexcept { return info_->runs_as; }

  // The async projection that runs it (register it as any projection).
  const projection& as_projection() const noexcept { return projection_; }

  // How the scheduler hands it refusals of its commands.
  scheduler::refusal_fn refusal_handler() const {
    return
        [refusals = refusals_](write_session& tx, const scheduled_command& row, const error& why) {
          auto it = refusals->find(row.command);
          if (it == refusals->end()) return false;
          if (!detail::claim_schedule(tx, row.id)) return true;  // handled elsewhere meanwhile
          it->second(tx, row, why);
          return true;
        };
  }

 private:
  using refusal_map =
      std::map<std::string,
               std::function<void(write_session&, const scheduled_command&, const error&)>,
               std::less<>>;
  std::shared_ptr<process_context::manager_info> info_;
  std::shared_ptr<refusal_map> refusals_;
  projection projection_;
};

}  // namespace cleave
