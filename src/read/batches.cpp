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

// Reads the log's batches for the caller, who applies them in order. The first is read on the
// caller's thread; when it comes back full (a long log), one thread of its own reads the rest,
// each into the buffer the caller gave back, one batch ahead of the one applied — a thread
// started a batch cost as much again, and left the reader idle meanwhile. (A third buffer, to
// read two ahead, measured no faster and holds one more batch: up to 100,000 events for a fold.)
class read_ahead {
 public:
  using read_fn =
      function_ref<position_token(position_token, std::size_t, std::vector<stored_event>&)>;
  struct batch {
    std::vector<stored_event> events;
    position_token after, through;
    bool full = false;  // as many events as asked for: the log goes on
    std::exception_ptr failure;
    // Whether the log may go on after it.
    bool more() const { return !failure && full && after < through; }
  };

  explicit read_ahead(read_fn read) : read_(read) {}
  ~read_ahead() {
    if (!reader_.joinable()) return;
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    reader_.join();  // (after at most the read under way)
  }
  read_ahead(const read_ahead&) = delete;
  read_ahead& operator=(const read_ahead&) = delete;

  // The first batch: `size` events after `from`, the batches after it growing (doubling) up to
  // `max` while they come back full. Once only, before next().
  batch& start(position_token from, std::size_t size, std::size_t max) {
    auto& first = ring_[0];
    fill(first, from, size);
    if (first.failure) std::rethrow_exception(first.failure);
    filled_ = handed_ = 1;
    if (first.more())
      reader_ = std::thread(
          [this, from = first.through, size = grown(size, max), max] { run(from, size, max); });
    return first;
  }

  // The batch after the last one handed out (which must have been full), valid until the next
  // call, which gives its buffer back to the reader. A read that threw is rethrown here.
  batch& next() {
    std::unique_lock lock(mutex_);
    released_ = handed_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return filled_ > handed_; });
    auto& b = ring_[handed_++ % ring_.size()];
    if (b.failure) std::rethrow_exception(b.failure);
    return b;
  }

 private:
  static std::size_t grown(std::size_t size, std::size_t max) {
    return std::max(size, std::min(size * 2, max));
  }
  void fill(batch& b, position_token from, std::size_t size) {
    b.after = from;
    try {
      b.through = read_(from, size, b.events);
      b.full = b.events.size() == size;
    } catch (...) {
      b.failure = std::current_exception();
    }
  }
  void run(position_token from, std::size_t size, std::size_t max) {
    for (std::size_t n = 1;; ++n) {
      {
        std::unique_lock lock(mutex_);
        // (Until the caller gives back the buffer of the batch before the one it applies.)
        changed_.wait(lock, [&] { return stopping_ || n - released_ < ring_.size(); });
        if (stopping_) return;
      }
      auto& b = ring_[n % ring_.size()];  // (the caller does not touch it until filled_ > n)
      fill(b, from, size);
      const bool more = b.more();
      from = b.through;
      size = grown(size, max);
      {
        std::lock_guard lock(mutex_);
        ++filled_;
      }
      changed_.notify_all();
      if (!more) return;
    }
  }

  read_fn read_;
  std::array<batch, 2> ring_;  // the batch applied and the one read ahead
  std::mutex mutex_;
  std::condition_variable changed_;
  std::size_t filled_ = 0, handed_ = 0, released_ = 0;
  bool stopping_ = false;
  std::thread reader_;
};

}  // namespace

std::size_t projector::stream_batches(
    position_token from, std::size_t batch, std::size_t max, std::span<const std::string> types,
    event_fields fields, function_ref<bool(std::vector<stored_event>&, position_token)> apply) {
  const auto read = [&](position_token after, std::size_t limit, std::vector<stored_event>& into) {
    return db_.read_events_into(after, limit, into, types, fields);
  };
  read_ahead batches(read);
  std::size_t applied = 0;
  for (auto* b = &batches.start(from, batch, max);; b = &batches.next()) {
    if (!(b->after < b->through)) return applied;
    if (!apply(b->events, b->through)) return applied;  // (the reader stops after its read)
    applied += b->events.size();  // (what apply left of them: a unit drops other units' events)
    if (!b->more()) return applied;
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
