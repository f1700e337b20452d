// The non-template parts of process managers: scheduling in a handler's transaction, and the
// table of instance states.

#include <cleave/workflow/process_manager.hpp>

#include <fmt/format.h>

namespace cleave {

std::string process_context::scoped(std::string_view key) const {
  return fmt::format("{}:{}", manager_.name, key);
}

std::string process_context::add(std::int64_t due_ms, std::string_view wire_name,
                                 const json& payload, std::string_view key) {
  // The n-th command of this event (or refusal): the same id however often it is handled.
  const std::string id = fmt::format("{}#{}", id_base_, sent_++);
  const auto now = detail::unix_ms_of(manager_.now());
  const std::string stored_key = key.empty() ? id : scoped(key);
  detail::insert_schedule(tx_, {.id = id,
                                .key = stored_key,
                                .due_ms = due_ms,
                                .command = wire_name,
                                .payload = &payload,
                                .origin = manager_.name,
                                .instance = instance_,
                                .runs_as = &manager_.runs_as,
                                .now_ms = now});
  return key.empty() ? id : std::string(key);
}

bool process_context::cancel_schedule(std::string_view key) {
  return detail::cancel_schedule(tx_, scoped(key));
}

namespace detail {

std::optional<std::string> load_process_state(write_session& tx, std::string_view table,
                                              std::string_view instance) {
  // Read by a no-op update, which locks the row until the transaction ends: a refusal's handler
  // and a batch of the manager (during a hand-over of the lease) change an instance one at a time.
  std::optional<std::string> found;
  const sql_value key[] = {instance};
  tx.query(expand_view("update {view} set updated_ms = updated_ms where instance = $1 returning "
                       "state",
                       table),
           key, [&](const row_view& row) {
             const sql_value state = row.get(0);
             if (auto* text = std::get_if<std::string_view>(&state); text && !found)
               found.emplace(*text);
           });
  return found;
}

void save_process_state(write_session& tx, std::string_view table, std::string_view instance,
                        const std::string* state_json, std::int64_t now_ms) {
  if (!state_json) {
    const sql_value key[] = {instance};
    tx.exec(expand_view("delete from {view} where instance = $1", table), key);
    return;
  }
  const sql_value row[] = {instance, std::string_view(*state_json), now_ms};
  tx.exec(expand_view("insert into {view}(instance, state, updated_ms) values ($1, $2, $3) on "
                      "conflict(instance) do update set state = excluded.state, updated_ms = "
                      "excluded.updated_ms",
                      table),
          row);
}

}  // namespace detail

}  // namespace cleave
