#include <cleave/core/behavior.hpp>
#include <cleave/core/detail/fibers.hpp>

#include <algorithm>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace cleave {

result<void> validation::handle(const message_ref& message, const request_meta&, next_step next) {
  if (auto ok = message.validate(); !ok) {
    auto e = std::move(ok.error());
    e.category = errc::validation;
    return std::unexpected(std::move(e));
  }
  return next();
}

logging::logging(std::shared_ptr<spdlog::logger> logger)
    : logger_(logger ? std::move(logger) : spdlog::default_logger()) {}

result<void> logging::handle(const message_ref& message, const request_meta& meta, next_step next) {
  const auto start = clock::now();
  auto outcome = next();
  const auto us =
      std::chrono::duration_cast<std::chrono::microseconds>(clock::now() - start).count();
  const auto& info = message.info();
  if (outcome) {
    logger_->debug("{} {} ok in {} us [correlation {}]", to_string(info.kind), info.wire_name, us,
                   meta.correlation_id);
  } else {
    const auto level =
        outcome.error().category == errc::internal ? spdlog::level::err : spdlog::level::info;
    logger_->log(level, "{} {} failed in {} us [correlation {}]: {}", to_string(info.kind),
                 info.wire_name, us, meta.correlation_id, outcome.error().describe());
  }
  return outcome;
}

void timing::on_register(const message_info& info, std::size_t slot) {
  while (slots_.size() <= slot) slots_.emplace_back();
  slots_[slot].info = &info;
}

result<void> timing::handle(const message_ref& message, const request_meta&, next_step next) {
  const auto start = clock::now();
  auto outcome = next();
  const auto ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start).count());
  auto& c = slots_[message.slot()];
  c.count.fetch_add(1, std::memory_order_relaxed);
  if (!outcome) c.failures.fetch_add(1, std::memory_order_relaxed);
  c.total_ns.fetch_add(ns, std::memory_order_relaxed);
  auto seen = c.max_ns.load(std::memory_order_relaxed);
  while (ns > seen && !c.max_ns.compare_exchange_weak(seen, ns, std::memory_order_relaxed)) {
  }
  return outcome;
}

std::optional<timing::figures> timing::figures_for(std::string_view wire_name) const {
  for (const auto& c : slots_) {
    if (c.info && c.info->wire_name == wire_name) {
      return figures{c.count.load(), c.failures.load(), std::chrono::nanoseconds(c.total_ns.load()),
                     std::chrono::nanoseconds(c.max_ns.load())};
    }
  }
  return std::nullopt;
}

void authorization::on_register(const message_info& info, std::size_t slot) {
  if (role_by_slot_.size() <= slot) role_by_slot_.resize(slot + 1, nullptr);
  auto it = role_by_message_.find(info.wire_name);
  role_by_slot_[slot] = it == role_by_message_.end() ? nullptr : &it->second;
}

result<void> authorization::handle(const message_ref& message, const request_meta& meta,
                                   next_step next) {
  const std::string* role =
      message.slot() < role_by_slot_.size() ? role_by_slot_[message.slot()] : nullptr;
  if (!role || meta.principal.has_role(*role)) return next();
  const auto& name = message.info().wire_name;
  if (meta.principal.subject.empty())
    return fail(errc::unauthorized,
                fmt::format("'{}' requires the role '{}'; the caller is anonymous", name, *role));
  return fail(errc::forbidden, fmt::format("'{}' requires the role '{}'", name, *role));
}

result<void> retry_on_conflict::handle(const message_ref&, const request_meta& meta,
                                       next_step next) {
  auto backoff = first_backoff_;
  for (int attempt = 1;; ++attempt) {
    auto outcome = next();
    if (outcome || outcome.error().category != errc::conflict || attempt >= max_attempts_)
      return outcome;
    if (clock::now() + backoff >= meta.deadline) return outcome;
    detail::pause(backoff);
    backoff *= 2;
  }
}

}  // namespace cleave
