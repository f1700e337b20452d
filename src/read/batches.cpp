// Reading the log for catch-up: batches of events (or spans, for set-based projections) that
// grow while the log goes on, the next one read on another thread while this one is applied.

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <future>
#include "claims.hpp"
#include "internal.hpp"

namespace cleave {

using namespace read_detail;

std::size_t projector::stream_batches(
    position_token from, std::size_t batch, std::size_t max, std::span<const std::string> types,
    event_fields fields, function_ref<bool(std::vector<stored_event>&, position_token)> apply) {
  // While a batch is applied the next one is read on another thread (into the other buffer).
  std::size_t applied = 0;
  // This batch and the next, each read into again and again: their strings are reused.
  std::array<std::vector<stored_event>, 2> buffers;
  std::size_t current = 0;
  std::future<position_token> ahead;
  for (;;) {
    auto& events = buffers[current];
    const auto through =
        ahead.valid() ? ahead.get() : db_.read_events_into(from, batch, events, types, fields);
    if (!(from < through)) return applied;
    const bool full = events.size() == batch;  // the log goes on: the next batch is larger
    if (full) batch = std::max(batch, std::min(batch * 2, max));
    from = through;
    if (full) {
      current = 1 - current;
      ahead = std::async(std::launch::async,
                         [this, from, batch, types, fields, &next = buffers[current]] {
                           return db_.read_events_into(from, batch, next, types, fields);
                         });
    }
    if (!apply(events, through)) return applied;  // (ahead's destructor waits for its read)
    applied += events.size();  // (what apply left of them: a unit drops other units' events)
    if (!full) return applied;
  }
}

std::size_t projector::catch_up_memory(memory_view_base& view, std::size_t batch) {
  // Only the types it handles (as stored: upcasters may rename), and of them what its handlers
  // see: the type and the payload.
  auto types = view.event_types();
  if (rewrites_ && !types.empty()) types = rewrites_->stored_as(types);
  const auto max = opts_.max_memory_batch;
  return stream_batches(view.checkpoint(), std::min(batch, max), max, types, event_fields::payload,
                        [&](std::vector<stored_event>& events, position_token through) {
                          if (rewrites_)
                            for (auto& e : events) rewrites_->apply(e.type, e.payload);
                          view.apply(events, through);
                          wake_waiters();  // in this process only: other processes have their own
                          return true;
                        });
}

std::size_t projector::catch_up_unit(const entry& p, std::size_t index, std::size_t batch,
                                     std::optional<std::int64_t> epoch) {
  const auto& unit = p.units[index];
  const auto row = reading(*p.views, [&](read_context& ctx) {
    return ctx.one<unit_row>(fmt::format("{} where name = $1", unit_row_select), unit);
  });
  if (!row) return 0;  // (made at add(), or by the swap that brings a new version's units)
  if (epoch && row->epoch != *epoch) return 0;  // claimed by another process since
  if (row->version != p.version) return 0;      // swapped in by another release: not ours
  auto from = token_of(row->transaction_id, row->position);
  const auto held = [&] { return !epoch || claims_->epoch_of(unit) == epoch; };
  const auto commit = [&](position_token to, function_ref<void(write_transaction&)> apply) {
    if (!held()) return false;
    if (!commit_batch(p, unit, row->epoch, from, to, apply)) {
      if (epoch)
        spdlog::warn(
            "projection {}: a batch of unit {} was not committed: the unit's checkpoint or lease "
            "moved on (another process claimed it)",
            p.def.name(), unit);
      return false;
    }
    from = to;
    return true;
  };
  if (const auto& sink = p.def.sink_handler()) {
    // Outside any transaction: the checkpoint moves after the sink has returned.
    return stream_batches(from, batch, opts_.max_batch, p.read_types, event_fields::all,
                          [&](std::vector<stored_event>& events, position_token to) {
                            if (rewrites_)
                              for (auto& e : events) rewrites_->apply(e.type, e.payload);
                            if (!held()) return false;  // (its effects are outside the database)
                            if (!events.empty()) sink(events);
                            return commit(to, [](write_transaction&) {});
                          });
  }
  if (p.def.batch_sql_text().empty()) {
    // Only the types it handles are read; the checkpoint moves past the others all the same.
    // A unit of a partitioned projection applies its own streams' events only.
    const bool sliced = p.units.size() > 1;
    const auto max = p.def.folds().empty() ? std::min(opts_.max_batch, opts_.max_handler_batch)
                                           : opts_.max_batch;
    return stream_batches(from, std::min(batch, max), max, p.read_types, event_fields::all,
                          [&](std::vector<stored_event>& events, position_token to) {
                            if (sliced)
                              std::erase_if(events, [&](const stored_event& e) {
                                return !in_unit(p, index, e.stream);
                              });
                            return commit(to, [&](write_transaction& tx) {
                              apply_batch(p, tx, p.def.table(), events, unit, max_attempts_);
                            });
                          });
  }
  // Set-based: one statement per batch.
  return stream_spans(from, first_set_based_span(batch), opts_.max_set_based_batch, {},
                      [&](const log_span& span) {
                        return commit(span.last, [&](write_transaction& tx) {
                          apply_set_based(p, tx, p.def.table(), from, span.last);
                        });
                      });
}

// A set-based batch holds no events in memory, and a statement over 500 rows costs little less
// than one over 30,000 (planning, the view's upserts): the first span is already 1/32 of the
// largest (a bound, not a wait: a projection that keeps up gets the few events there are); the
// spans double from there, the next one counted while this one runs.
std::size_t projector::first_set_based_span(std::size_t batch) const {
  return std::max(batch, opts_.max_set_based_batch / 32);
}

std::size_t projector::stream_spans(position_token from, std::size_t batch, std::size_t max,
                                    position_token until,
                                    function_ref<bool(const log_span&)> apply) {
  // As stream_batches: the next span is counted while this one is applied.
  std::size_t applied = 0;
  std::future<log_span> ahead;
  for (;;) {
    const auto span = ahead.valid() ? ahead.get() : db_.read_span(from, batch, until);
    if (span.events == 0) return applied;
    const bool full = span.events == batch;
    if (full) batch = std::max(batch, std::min(batch * 2, max));
    from = span.last;
    if (full)
      ahead = std::async(std::launch::async,
                         [this, from, batch, until] { return db_.read_span(from, batch, until); });
    if (!apply(span)) return applied;  // (ahead's destructor waits for its read)
    applied += span.events;
    if (!full) return applied;
  }
}

}  // namespace cleave
