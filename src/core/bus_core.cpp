#include <cleave/core/detail/bus_core.hpp>

#include <atomic>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace cleave::detail {

std::size_t next_type_id() noexcept {
  static std::atomic<std::size_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed);
}

void bus_core::add(std::size_t type, const message_ops& ops, handler_ptr handler, erased_fn invoke,
                   json_fn invoke_json) {
  const auto& info = *ops.info;
  if (find(type)) {
    throw std::logic_error(fmt::format("a handler for {} '{}' ({}) is already registered",
                                       to_string(info.kind), info.wire_name, info.type_name));
  }
  if (const entry* other = find(info.wire_name)) {
    throw std::logic_error(fmt::format("{} '{}' ({}) uses the wire name of {}, which has a handler",
                                       to_string(info.kind), info.wire_name, info.type_name,
                                       other->ops->info->type_name));
  }
  const std::size_t slot = entries_.size();
  entries_.push_back(entry{&ops, std::move(handler), invoke, invoke_json, slot});
  if (by_type_.size() <= type) by_type_.resize(type + 1, -1);
  by_type_[type] = static_cast<std::int32_t>(slot);
  by_name_.emplace(std::string(info.wire_name), slot);
  for (const auto& b : behaviors_) b->on_register(info, slot);
}

void bus_core::use(std::shared_ptr<behavior> b) {
  for (const auto& e : entries_) b->on_register(*e.ops->info, e.slot);
  pipeline_.push_back(b.get());
  behaviors_.push_back(std::move(b));
}

const bus_core::entry* bus_core::find(std::string_view wire_name) const noexcept {
  auto it = by_name_.find(wire_name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

namespace {
// The rest of the pipeline from `at`: the next behavior, or the handler's step at the end.
struct pipeline_rest {
  behavior* const* at;
  behavior* const* end;
  const message_ref* message;
  function_ref<result<void>(const request_meta&)> innermost;

  result<void> operator()(const request_meta& meta) const {
    if (at == end) return innermost(meta);
    const pipeline_rest rest{at + 1, end, message, innermost};
    return (*at)->handle(*message, meta, next_step(rest, meta));
  }
};
}  // namespace

result<void> bus_core::run(const message_ref& message, const request_meta& meta,
                           function_ref<result<void>(const request_meta&)> innermost) const {
  try {
    return pipeline_rest{pipeline_.data(), pipeline_.data() + pipeline_.size(), &message,
                         innermost}(meta);
  } catch (...) {
    return std::unexpected(error_from_current_exception(message.info(), meta));
  }
}

std::vector<const message_info*> bus_core::handled() const {
  std::vector<const message_info*> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.ops->info);
  return out;
}

std::vector<const message_ops*> bus_core::handled_ops() const {
  std::vector<const message_ops*> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.ops);
  return out;
}

std::vector<const message_info*> bus_core::unhandled() const {
  std::vector<const message_info*> out;
  for (const auto* info : declared_messages()) {
    if (info->kind == kind_ && !find(info->wire_name)) out.push_back(info);
  }
  return out;
}

result<void> bus_core::check_complete() const {
  auto missing = unhandled();
  if (missing.empty()) return {};
  std::string names;
  for (const auto* info : missing)
    names +=
        fmt::format("{}'{}' ({})", names.empty() ? "" : ", ", info->wire_name, info->type_name);
  return fail(errc::internal, fmt::format("{} declared {}{} without a handler: {}", missing.size(),
                                          to_string(kind_), missing.size() == 1 ? "" : "s", names));
}

error error_from_current_exception(const message_info& info, const request_meta& meta) {
  try {
    throw;
  } catch (const error_exception& e) {
    return e.error();
  } catch (const std::exception& e) {
    spdlog::error("{} {} threw [correlation {}]: {}", to_string(info.kind), info.wire_name,
                  meta.correlation_id, e.what());
  } catch (...) {
    spdlog::error("{} {} threw a non-standard exception [correlation {}]", to_string(info.kind),
                  info.wire_name, meta.correlation_id);
  }
  return error{errc::internal,
               meta.correlation_id.empty()
                   ? std::string("internal error")
                   : fmt::format("internal error (correlation id {})", meta.correlation_id),
               {}};
}

error no_handler(const message_info& info) {
  return error{errc::not_found,
               fmt::format("no handler is registered for {} '{}' ({})", to_string(info.kind),
                           info.wire_name, info.type_name),
               {}};
}

}  // namespace cleave::detail
