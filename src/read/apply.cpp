// Applying events to a view inside a batch's transaction: the handlers (all in one savepoint, then
// one savepoint per event to find a failing one, parked as a dead letter after enough tries), the
// folds, and set-based statements over a span of the log (the store expands {events}).

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cleave/core/detail/string_hash.hpp>
#include <cleave/store/detail/sql_text.hpp>
#include "internal.hpp"

namespace cleave {

using namespace read_detail;

std::string expand_view(std::string_view sql, std::string_view table) {
  return detail::replace_all(sql, "{view}", table);
}

std::string projection::version_key() const {
  // (One partition adds nothing: the key of a view made before partitions stays the same.)
  const auto sliced = partitions_ > 1 ? fmt::format("\npartitions {}", partitions_) : "";
  return fmt::format("{}:{:016x}", version_,
                     detail::stable_hash(fmt::format("{}\n{}\n{}\n{}{}", schema_, batch_sql_,
                                                     select_, key_, sliced)));
}

std::string view_context::with_table(std::string_view sql) const {
  return expand_view(sql, table_);
}

// The handlers of `events`, each in a savepoint: a failing event is retried by failing the
// whole batch until it has failed `attempts` times, then parked as a dead letter under
// `park_as`.
void projector::apply_one_by_one(
    const entry& p, write_transaction& tx, std::vector<stored_event>& events,
    std::string_view park_as, int attempts,
    function_ref<void(const stored_event&, const projection::apply_fn&)> run) {
  for (auto& e : events) {
    const auto* handler = p.def.handler_for(e.type);
    if (!handler) continue;
    tx.exec("savepoint cleave_event", {});
    try {
      run(e, *handler);
      tx.exec("release savepoint cleave_event", {});
    } catch (const std::exception& failure) {
      tx.exec("rollback to savepoint cleave_event", {});
      tx.exec("release savepoint cleave_event", {});
      // A deadlock or serialization failure is the database's, not the handler's: the whole
      // batch is tried again, and the event is not counted against its attempts.
      if (dynamic_cast<const transient_error*>(&failure)) throw;
      const std::string key = fmt::format("{}@{}", park_as, e.position.to_string());
      {
        std::lock_guard lock(failures_mutex_);
        if (++failures_[key] < attempts) throw;  // the whole batch is tried again later
        failures_.erase(key);
      }
      // Tried enough: park it and go on, so one bad event does not stop the projection.
      const std::string payload = e.payload.dump();
      const std::string why = failure.what();
      write_context ctx(&tx, detail::no_meta);
      ctx.exec(
          "insert into cleave_dead_letters(projection, transaction_id, position, type, payload, "
          "error) values ($1, $2, $3, $4, $5, $6) on conflict do nothing",
          park_as, tx_of(e.position), pos_of(e.position), e.type, payload, why);
      spdlog::warn("projection {}: parked {} at {}: {}", p.def.name(), e.type,
                   e.position.to_string(), why);
    }
  }
}

// Applies `events` to table `table` of projection `p` inside `tx`: the handlers (a failing
// event retried, then parked under `park_as`: apply_one_by_one), then the folds.
void projector::apply_batch(const entry& p, write_transaction& tx, std::string_view table,
                            std::vector<stored_event>& events, std::string_view park_as,
                            int attempts) {
  if (rewrites_)
    for (auto& e : events) rewrites_->apply(e.type, e.payload);
  const auto run = [&](const stored_event& e, const projection::apply_fn& handler) {
    view_context view(tx, table, e);
    handler(e.payload, view);
  };
  // First the whole batch in one savepoint, its statements queued (on PostgreSQL sent in one
  // round trip, or a few: a pipeline; a failure among them surfaces at the release); only when a
  // handler fails is it run again with a savepoint per event, each statement waited for, to find
  // the failing one (three statements per event, on PostgreSQL three round trips).
  tx.exec("savepoint cleave_batch", {});
  try {
    for (const auto& e : events)
      if (const auto* handler = p.def.handler_for(e.type)) {
        view_context view(tx, table, e, true);
        (*handler)(e.payload, view);
      }
    tx.exec("release savepoint cleave_batch", {});
  } catch (const transient_error&) {
    tx.exec("rollback to savepoint cleave_batch", {});
    tx.exec("release savepoint cleave_batch", {});
    throw;  // the database's failure, not a handler's (see apply_one_by_one)
  } catch (const std::exception&) {
    tx.exec("rollback to savepoint cleave_batch", {});
    tx.exec("release savepoint cleave_batch", {});
    apply_one_by_one(p, tx, events, park_as, attempts, run);
  }
  if (p.def.folds().empty() || events.empty()) return;
  std::vector<const stored_event*> of_type;
  for (const auto& [type, fold] : p.def.folds()) {
    of_type.clear();
    for (const auto& e : events)
      if (e.type == type) of_type.push_back(&e);
    if (of_type.empty()) continue;
    view_context view(tx, table, *of_type.back());
    fold(of_type, view);
  }
}

// Runs the projection's batch statement over the log's rows after `from` up to `to`.
void projector::apply_set_based(const entry& p, write_transaction& tx, std::string_view table,
                                position_token from, position_token to) {
  db_.exec_over_events(tx, expand_view(p.def.batch_sql_text(), table), from, to);
}

}  // namespace cleave
