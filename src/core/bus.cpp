#include <cleave/core/bus.hpp>

#include <fmt/format.h>

namespace cleave {

namespace detail {

result<void> run_write(session_source* source, const message_info& info, const request_meta& meta,
                       position_token& position, function_ref<result<void>(write_context&)> body) {
  if (!source) {
    try {
      write_context ctx(nullptr, meta);
      return body(ctx);
    } catch (...) {
      return std::unexpected(error_from_current_exception(info, meta));
    }
  }
  write_transaction* tx = nullptr;
  try {
    tx = &source->begin_write(meta);
    write_context ctx(tx, meta);
    auto outcome = body(ctx);
    auto* ending = std::exchange(tx, nullptr);
    if (!outcome) {
      ending->rollback();
      return outcome;
    }
    position = ending->commit();  // on failure the transaction is already over
    return {};
  } catch (...) {
    if (tx) tx->rollback();
    return std::unexpected(error_from_current_exception(info, meta));
  }
}

result<void> run_read(session_source* source, const message_info& info, const request_meta& meta,
                      function_ref<result<void>(read_context&)> body) {
  read_transaction* tx = nullptr;
  try {
    if (source) tx = &source->begin_read(meta);
    read_context ctx(tx, meta);
    auto outcome = body(ctx);
    if (tx) std::exchange(tx, nullptr)->finish();
    return outcome;
  } catch (...) {
    if (tx) tx->finish();
    return std::unexpected(error_from_current_exception(info, meta));
  }
}

template <class Bus>
result<json_outcome> dispatch_by_name(const bus_core& core, Bus* bus, message_kind kind,
                                      std::string_view wire_name, const json& body,
                                      const request_meta& meta) {
  const auto* e = core.find(wire_name);
  if (!e) return fail(errc::not_found, fmt::format("unknown {} '{}'", to_string(kind), wire_name));
  return e->invoke_json(bus, body, meta);
}

}  // namespace detail

result<json_outcome> command_bus::send_json(std::string_view wire_name, const json& body,
                                            const request_meta& meta) {
  return detail::dispatch_by_name(core_, this, message_kind::command, wire_name, body, meta);
}

result<json_outcome> query_bus::ask_json(std::string_view wire_name, const json& body,
                                         const request_meta& meta) {
  return detail::dispatch_by_name(core_, this, message_kind::query, wire_name, body, meta);
}

}  // namespace cleave
