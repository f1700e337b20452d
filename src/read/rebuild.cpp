// Rebuilds: a projection built again from the log into a shadow table, in named steps —
// start (or resume an interrupted one), fill (chunks that each commit and move the rebuild's own
// position), then swap: with the live checkpoint compared-and-set, optionally verify the shadow
// against the live view brought to the same position, and put the shadow in the live view's
// place, all in one transaction (readers never see a missing or half-built view).

#include <cleave/read/projector.hpp>

#include <chrono>
#include <future>
#include <limits>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "internal.hpp"

namespace cleave {

using namespace read_detail;

class projector::rebuilding {
 public:
  rebuilding(projector& owner, const entry& p, const rebuild_options& options)
      : owner_(owner),
        p_(p),
        name_(p.def.name()),
        options_(options),
        views_(*p.views),
        set_based_(!p.def.batch_sql_text().empty()),
        first_chunk_(options.chunk ? options.chunk
                     : set_based_  ? owner.first_set_based_span(owner.opts_.batch)
                                   : owner.opts_.batch),
        max_chunk_(options.chunk ? options.chunk
                   : set_based_  ? owner.opts_.max_set_based_batch
                                 : owner.opts_.max_batch) {}

  rebuild_progress run() {
    start_or_resume();
    fill({});
    for (int attempt = 0;; ++attempt) {
      const auto live_at = owner_.checkpoint(name_);
      if (at_ < live_at) {
        const auto before = at_;
        fill(live_at);
        // The log is held back (a long transaction on PostgreSQL): give it a moment.
        if (at_ == before) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      switch (swap(live_at)) {
        case swap_outcome::swapped:
          progress_.swapped = true;
          owner_.announce_progress();
          report(true);
          return progress_;
        case swap_outcome::differs:
          spdlog::warn("projection {}: rebuild differs from the live view in {} rows; not swapped",
                       name_, progress_.differences);
          report(true);
          return progress_;
        case swap_outcome::live_moved:
          break;
      }
      if (attempt > 1000)
        throw error_exception({errc::unavailable,
                               fmt::format("rebuild of '{}' could not catch the live view", name_),
                               {}});
    }
  }

 private:
  enum class swap_outcome { swapped, differs, live_moved };

  // Finds the rebuild under way, or starts one: a fresh shadow table and its row, in one commit.
  // The events to apply are counted beside the first chunks, for a progress callback.
  void start_or_resume() {
    auto current = reading(views_, [&](read_context& ctx) {
      return ctx.one<rebuild_row>(
          "select shadow, transaction_id, position from cleave_rebuilds where name = $1", name_);
    });
    if (current) {
      state_ = *current;
      progress_.resumed = true;
    } else {
      state_.shadow = fmt::format("{}_rebuild_{}", p_.def.table(), unix_ms());
      writing(views_, [&](write_transaction& tx, write_context& ctx) {
        tx.script(expand_view(p_.def.schema_sql(), state_.shadow));
        ctx.exec(
            "insert into cleave_rebuilds(name, shadow, transaction_id, position) values ($1, $2, "
            "0, 0)",
            name_, state_.shadow);
        return true;
      });
    }
    at_ = token_of(state_.transaction_id, state_.position);
    if (options_.on_progress)
      total_ = std::async(std::launch::async, [&log = owner_.db_, from = at_] {
        return log.read_span(from, std::numeric_limits<std::int64_t>::max()).events;
      });
  }

  // Applies chunks into the shadow up to `until` (empty: the log's end).
  void fill(position_token until) {
    if (set_based_) {
      owner_.stream_spans(at_, first_chunk_, max_chunk_, until, [&](const log_span& span) {
        commit_chunk(span.events, span.last, [&](write_transaction& tx) {
          owner_.apply_set_based(p_, tx, state_.shadow, at_, span.last);
        });
        return true;
      });
      return;
    }
    // Every event (not only the handled types): progress counts events against the log's.
    owner_.stream_batches(
        at_, first_chunk_, max_chunk_, {}, [&](std::vector<stored_event>& events, position_token) {
          const bool past = !until.empty() && std::erase_if(events, [&](const stored_event& e) {
                                                return until < e.position;
                                              }) > 0;
          if (events.empty()) return false;
          commit_chunk(events.size(), events.back().position, [&](write_transaction& tx) {
            owner_.apply_batch(p_, tx, state_.shadow, events, state_.shadow, 1);
          });
          return !past;
        });
  }

  // One chunk: applied to the shadow with the rebuild's own position moved from at_ to `to`.
  void commit_chunk(std::size_t count, position_token to,
                    function_ref<void(write_transaction&)> apply) {
    const bool moved = writing(views_, [&](write_transaction& tx, write_context& ctx) {
      apply(tx);
      return ctx.exec(
                 "update cleave_rebuilds set transaction_id = $2, position = $3 where name = $1 "
                 "and transaction_id = $4 and position = $5",
                 name_, tx_of(to), pos_of(to), tx_of(at_), pos_of(at_)) == 1;
    });
    if (!moved)
      throw error_exception(
          {errc::conflict, fmt::format("another rebuild of '{}' is running", name_), {}});
    progress_.applied += count;
    at_ = to;
    report();
  }

  // The swap, with the live checkpoint (at `live_at`, behind or at the shadow) moved to the
  // shadow's position by compare-and-set: a live batch that raced it fails its own.
  swap_outcome swap(position_token live_at) {
    // Verify: the live view is brought to the shadow's position first, then compared.
    std::vector<stored_event> live_gap;
    if (options_.verify && live_at < at_ && !set_based_) {
      live_gap = owner_.db_.read_events(live_at, std::numeric_limits<std::int32_t>::max());
      std::erase_if(live_gap, [&](const stored_event& e) { return at_ < e.position; });
    }
    bool differs = false;
    const auto live = p_.def.table();
    const bool swapped = writing(views_, [&](write_transaction& tx, write_context& ctx) {
      if (ctx.exec("update cleave_checkpoints set transaction_id = $2, position = $3 where name "
                   "= $1 and transaction_id = $4 and position = $5",
                   name_, tx_of(at_), pos_of(at_), tx_of(live_at), pos_of(live_at)) != 1)
        return false;  // the live view moved meanwhile: look again
      if (options_.verify) {
        if (set_based_)
          owner_.apply_set_based(p_, tx, live, live_at, at_);
        else
          owner_.apply_batch(p_, tx, live, live_gap, name_, 1);
        progress_.differences =
            rows_only_in(ctx, live, state_.shadow) + rows_only_in(ctx, state_.shadow, live);
        if (progress_.differences != 0) {
          differs = true;
          return false;
        }
      }
      tx.exec(fmt::format("drop table {}", live), {});
      tx.exec(fmt::format("alter table {} rename to {}", state_.shadow, live), {});
      // Dead letters now are the rebuild's: the old view's no longer apply.
      ctx.exec("delete from cleave_dead_letters where projection = $1", name_);
      ctx.exec("update cleave_dead_letters set projection = $1 where projection = $2", name_,
               state_.shadow);
      ctx.exec("delete from cleave_rebuilds where name = $1", name_);
      return true;
    });
    if (differs) return swap_outcome::differs;
    return swapped ? swap_outcome::swapped : swap_outcome::live_moved;
  }

  static std::int64_t rows_only_in(write_context& ctx, std::string_view a, std::string_view b) {
    return ctx
        .one<std::int64_t>(fmt::format(
            "select count(*) from (select * from {} except select * from {}) as d", a, b))
        .value_or(0);
  }

  // Hands the progress to the callback (the total waits for its count).
  void report(bool last = false) {
    if (total_.valid()) progress_.total = total_.get();
    if (last && !options_.on_progress) progress_.total = progress_.applied;
    if (options_.on_progress) options_.on_progress(progress_);
  }

  projector& owner_;
  const entry& p_;
  const std::string& name_;
  const rebuild_options& options_;
  store& views_;
  const bool set_based_;
  const std::size_t first_chunk_, max_chunk_;
  rebuild_progress progress_;
  rebuild_row state_;
  position_token at_;  // how far the shadow has got
  std::future<std::uint64_t> total_;
};

rebuild_progress projector::rebuild(std::string_view name, const rebuild_options& options) {
  const auto& p = find(name);
  if (p.def.mode() == projection_mode::materialized) {
    // A materialized view is rebuilt whole by its refresh.
    refresh_wanted_ = true;
    refresh_materialized(false);
    rebuild_progress done;
    done.swapped = true;
    if (options.on_progress) options.on_progress(done);
    return done;
  }
  if (p.def.mode() != projection_mode::async || p.def.schema_sql().empty())
    throw error_exception(
        {errc::validation,
         fmt::format("projection '{}' cannot be rebuilt: only an async projection with a schema "
                     "has a view to rebuild beside the live one",
                     name),
         {}});
  return rebuilding(*this, p, options).run();
}

void projector::discard_rebuild(std::string_view name) {
  const auto& p = find(name);
  writing(*p.views, [&](write_transaction& tx, write_context& ctx) {
    if (auto r = ctx.one<rebuild_row>(
            "select shadow, transaction_id, position from cleave_rebuilds where name = $1", name)) {
      tx.exec(fmt::format("drop table if exists {}", r->shadow), {});
      ctx.exec("delete from cleave_dead_letters where projection = $1", r->shadow);
    }
    ctx.exec("delete from cleave_rebuilds where name = $1", name);
    return true;
  });
}

}  // namespace cleave
