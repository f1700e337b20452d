// Reading the log for catch-up: batches of events (or spans, for set-based projections) that
// grow while the log goes on, read ahead on another thread while the caller applies them.

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <future>
#include <mutex>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "claims.hpp"
#include "internal.hpp"

namespace cleave {

using namespace read_detail;

namespace {

// Reads a long log's batches ahead on a thread of its own, into a ring of buffers, while the
// caller applies them in order: the reader never waits for the caller to hand it the next batch
// (a thread started a batch cost as much, and left the reader idle meanwhile).
class read_ahead {
 public:
  using read_fn =
      function_ref<position_token(position_token, std::size_t, std::vector<stored_event>&)>;
  struct batch {
    std::vector<stored_event> events;
    position_token after, through;
    bool full = false;  // as many events as asked for: the log goes on
    std::exception_ptr failure;
  };

  // Reads from after `from`, `size` events a batch growing (doubling) up to `max` while they
  // come back full; stops after the first batch that is not.
  read_ahead(read_fn read, position_token from, std::size_t size, std::size_t max)
      : read_(read), thread_([this, from, size, max] { run(from, size, max); }) {}
  ~read_ahead() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();  // (after at most the read under way)
  }
  read_ahead(const read_ahead&) = delete;
  read_ahead& operator=(const read_ahead&) = delete;

  // The next batch in order, valid until the next call (which gives its buffer back to the
  // reader). A read that threw is rethrown here.
  batch& next() {
    std::unique_lock lock(mutex_);
    if (handed_ > released_) {
      released_ = handed_;
      changed_.notify_all();
    }
    changed_.wait(lock, [&] { return filled_ > handed_; });
    auto& b = ring_[handed_++ % ring_.size()];
    if (b.failure) std::rethrow_exception(b.failure);
    return b;
  }

 private:
  void run(position_token from, std::size_t size, std::size_t max) {
    for (std::size_t n = 0;; ++n) {
      {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return stopping_ || n - released_ < ring_.size(); });
        if (stopping_) return;
      }
      auto& b = ring_[n % ring_.size()];  // (the caller does not touch it until filled_ > n)
      b.after = from;
      try {
        b.through = read_(from, size, b.events);
        b.full = b.events.size() == size;
      } catch (...) {
        b.failure = std::current_exception();
      }
      const bool more = !b.failure && b.full && from < b.through;
      from = b.through;
      size = std::max(size, std::min(size * 2, max));
      {
        std::lock_guard lock(mutex_);
        ++filled_;
      }
      changed_.notify_all();
      if (!more) return;
    }
  }

  read_fn read_;
  std::array<batch, 3> ring_;  // the one applied, the one read, one more read ahead
  std::mutex mutex_;
  std::condition_variable changed_;
  std::size_t filled_ = 0, handed_ = 0, released_ = 0;
  bool stopping_ = false;
  std::thread thread_;  // (last: it starts on the members above)
};

}  // namespace

std::size_t projector::stream_batches(
    position_token from, std::size_t batch, std::size_t max, std::span<const std::string> types,
    event_fields fields, function_ref<bool(std::vector<stored_event>&, position_token)> apply) {
  const auto read = [&](position_token after, std::size_t limit, std::vector<stored_event>& into) {
    return db_.read_events_into(after, limit, into, types, fields);
  };
  // The first batch here; when it is full (a long log), the rest read ahead on another thread
  // while each is applied.
  std::vector<stored_event> first;
  const auto through = read(from, batch, first);
  if (!(from < through)) return 0;
  const bool full = first.size() == batch;
  if (!full) return apply(first, through) ? first.size() : 0;
  read_ahead ahead(read, through, std::max(batch, std::min(batch * 2, max)), max);
  if (!apply(first, through)) return 0;  // (ahead's destructor waits for its read)
  std::size_t applied = first.size();    // (what apply left of them: a unit drops others')
  for (;;) {
    auto& next = ahead.next();
    if (!(next.after < next.through)) return applied;
    if (!apply(next.events, next.through)) return applied;
    applied += next.events.size();
    if (!next.full) return applied;
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
