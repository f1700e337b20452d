// Rebuilds: a projection built again from the log into a shadow table, in named steps —
// start (or resume an interrupted one of the same version), fill (chunks that each commit and
// move the rebuild's own position), then swap: in one transaction, the live table taken first and
// then its checkpoint (the order of live batches), the shadow brought to the live view's
// position, optionally compared with it (a plain-words report of what differs), and renamed into
// its place; the old table is kept for a grace period (readers never see a missing or half-built
// view). Upgrades — a projection registered with another version than its live view's — are
// rebuilds taken a step at a time by the worker.

#include <cleave/read/projector.hpp>

#include <chrono>
#include <future>
#include <limits>
#include <optional>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "internal.hpp"

namespace cleave {

using namespace read_detail;

namespace {

// A number in few characters: names built from a table's name and a time stay short of
// PostgreSQL's 63.
std::string base36(std::int64_t n) {
  std::string out;
  auto u = static_cast<std::uint64_t>(n);
  do {
    out.insert(out.begin(), "0123456789abcdefghijklmnopqrstuvwxyz"[u % 36]);
    u /= 36;
  } while (u > 0);
  return out;
}

// A value of a row, as a sample key in a message.
std::string text_of(const sql_value& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>)
          return "null";
        else if constexpr (std::is_same_v<T, std::string_view>)
          return x.size() > 40 ? fmt::format("'{}…'", x.substr(0, 40)) : fmt::format("'{}'", x);
        else
          return fmt::format("{}", x);
      },
      v);
}

std::vector<std::string> columns_of(write_session& tx, std::string_view table) {
  std::vector<std::string> out;
  tx.query(fmt::format("select * from {} limit 1", table), {}, [&](const row_view& r) {
    for (std::size_t i = 0; i < r.size(); ++i) out.emplace_back(r.column_name(i));
  });
  return out;
}

std::int64_t count_of(write_session& tx, const std::string& sql) {
  std::int64_t n = 0;
  tx.query(sql, {}, [&](const row_view& r) { n = std::get<std::int64_t>(r.get(0)); });
  return n;
}

// The rows of `a` that `b` lacks: how many, and the first column of up to five of them.
std::pair<std::int64_t, std::string> only_in(write_session& tx, std::string_view a,
                                             std::string_view b) {
  const auto rows = fmt::format("select * from {} except select * from {}", a, b);
  const auto n = count_of(tx, fmt::format("select count(*) from ({}) as d", rows));
  std::string keys;
  tx.query(fmt::format("select * from ({}) as d limit 5", rows), {}, [&](const row_view& r) {
    keys += fmt::format("{}{}", keys.empty() ? "" : ", ", text_of(r.get(0)));
  });
  return {n, n > 5 ? keys + ", …" : keys};
}

// What differs between the live view and the rebuilt one, in plain words (empty when nothing
// does); `rows` is set to how many rows differ.
std::string describe_difference(write_session& tx, std::string_view live, std::string_view rebuilt,
                                std::int64_t& rows) {
  const auto live_rows = count_of(tx, fmt::format("select count(*) from {}", live));
  const auto rebuilt_rows = count_of(tx, fmt::format("select count(*) from {}", rebuilt));
  const auto counts =
      fmt::format("the live view has {} rows, the rebuilt one {}", live_rows, rebuilt_rows);
  rows = live_rows + rebuilt_rows;
  if (live_rows == 0 || rebuilt_rows == 0) return rows == 0 ? "" : counts;
  const auto live_columns = columns_of(tx, live);
  const auto rebuilt_columns = columns_of(tx, rebuilt);
  if (live_columns != rebuilt_columns)
    return fmt::format("the rebuilt view has the columns ({}) where the live view has ({}); {}",
                       fmt::join(rebuilt_columns, ", "), fmt::join(live_columns, ", "), counts);
  try {
    const auto [gone, gone_keys] = only_in(tx, live, rebuilt);
    const auto [added, added_keys] = only_in(tx, rebuilt, live);
    rows = gone + added;
    if (rows == 0) return "";
    std::string out = counts;
    const auto rows_are = [](std::int64_t n) {
      return n == 1 ? std::string("1 row is") : fmt::format("{} rows are", n);
    };
    if (gone > 0)
      out +=
          fmt::format("; {} only in the live view (first column: {})", rows_are(gone), gone_keys);
    if (added > 0)
      out += fmt::format("; {} only in the rebuilt one (first column: {})", rows_are(added),
                         added_keys);
    return out;
  } catch (const transient_error&) {
    throw;  // the database gave the swap up: it is tried again
  } catch (const error_exception&) {
    return fmt::format(
        "the views' columns ({}) have the same names but do not compare (their "
        "types differ); {}",
        fmt::join(live_columns, ", "), counts);
  }
}

}  // namespace

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

  // The whole rebuild: the shadow filled to the end of the log, then swapped in.
  rebuild_progress run() {
    start_or_resume();
    fill(std::numeric_limits<std::size_t>::max());
    swap_retrying();
    return progress_;
  }

  // Up to `budget` events into the shadow; the swap too, when that reached the end of the log.
  rebuild_progress advance(std::size_t budget) {
    start_or_resume();
    if (fill(budget)) swap_retrying();
    return progress_;
  }

 private:
  enum class swap_outcome { swapped, differs, live_moved, lost };

  // Finds the rebuild under way, or starts one: a fresh shadow table and its row, in one commit.
  // A rebuild of another version (or one begun before versions) is dropped, never resumed. The
  // events to apply are counted beside the first chunks, for a progress callback.
  void start_or_resume() {
    std::optional<rebuild_row> current;
    if (auto row = reading(views_, [&](read_context& ctx) {
          return ctx.one<rebuild_row>(
              fmt::format("select {} from cleave_rebuilds where name = $1", rebuild_columns),
              name_);
        }))
      current = std::move(*row);
    if (current && current->version != p_.version) {
      spdlog::info("projection {}: dropping the shadow {} of another version ({})", name_,
                   current->shadow, current->version.empty() ? "unrecorded" : current->version);
      owner_.discard_rebuild(name_);
      current.reset();
    }
    if (current) {
      state_ = *current;
      progress_.resumed = true;
    } else {
      state_ = {};
      state_.shadow = fmt::format("{}_rebuild_{}", p_.def.table().substr(0, 40), base36(unix_ms()));
      state_.version = p_.version;
      writing(views_, [&](write_transaction& tx, write_context& ctx) {
        tx.script(expand_view(p_.def.schema_sql(), state_.shadow));
        ctx.exec(
            "insert into cleave_rebuilds(name, shadow, transaction_id, position, version) values "
            "($1, $2, 0, 0, $3)",
            name_, state_.shadow, state_.version);
        return true;
      });
    }
    at_ = token_of(state_.transaction_id, state_.position);
    if (options_.on_progress)
      total_ = std::async(std::launch::async, [&log = owner_.db_, from = at_] {
        return log.read_span(from, std::numeric_limits<std::int64_t>::max()).events;
      });
  }

  // Applies chunks into the shadow until the end of the log, or `until` when set (true), or
  // until `budget` events are applied (false).
  bool fill(std::size_t budget, position_token until = {}) {
    bool stopped = false;
    const auto spend = [&](std::size_t n) {
      budget -= std::min(budget, n);
      stopped = budget == 0;
      return !stopped;
    };
    if (set_based_) {
      owner_.stream_spans(at_, first_chunk_, max_chunk_, until, [&](const log_span& span) {
        commit_chunk(span.events, span.last, [&](write_transaction& tx) {
          owner_.apply_set_based(p_, tx, state_.shadow, at_, span.last);
        });
        return spend(span.events);
      });
      return !stopped;
    }
    // Every event (not only the handled types): progress counts events against the log's.
    owner_.stream_batches(
        at_, first_chunk_, max_chunk_, {}, event_fields::all,
        [&](std::vector<stored_event>& events, position_token) {
          const bool past = !until.empty() && std::erase_if(events, [&](const stored_event& e) {
                                                return until < e.position;
                                              }) > 0;
          if (events.empty()) return false;
          commit_chunk(events.size(), events.back().position, [&](write_transaction& tx) {
            owner_.apply_batch(p_, tx, state_.shadow, events, state_.shadow, 1);
          });
          return spend(events.size()) && !past;
        });
    return !stopped;
  }

  // One chunk: applied to the shadow with the rebuild's own position moved from at_ to `to`.
  void commit_chunk(std::size_t count, position_token to,
                    function_ref<void(write_transaction&)> apply) {
    // The rebuild's row before its shadow table: the order of the swap and of discard_rebuild.
    const bool moved = writing(views_, [&](write_transaction& tx, write_context& ctx) {
      if (ctx.exec("update cleave_rebuilds set transaction_id = $2, position = $3 where name = "
                   "$1 and transaction_id = $4 and position = $5",
                   name_, tx_of(to), pos_of(to), tx_of(at_), pos_of(at_)) != 1)
        return false;
      apply(tx);
      return true;
    });
    if (!moved)
      throw error_exception(
          {errc::conflict, fmt::format("another rebuild of '{}' is running", name_), {}});
    progress_.applied += count;
    at_ = to;
    report();
  }

  // Swaps, bringing the shadow to the live view first whenever that moved on, and trying again
  // when the database gave the swap up.
  void swap_retrying() {
    for (int attempt = 1;; ++attempt) {
      swap_outcome outcome;
      const auto began = clock::now();
      try {
        outcome = swap();
        progress_.swap_ms = std::chrono::duration<double, std::milli>(clock::now() - began).count();
      } catch (const transient_error& e) {
        // A deadlock or a serialization failure the database chose this swap for: nothing of
        // it stayed; take the locks again.
        if (attempt >= 10) throw;
        spdlog::info("projection {}: swap given up by the database ({}); trying again", name_,
                     e.error().message);
        std::this_thread::sleep_for(std::chrono::milliseconds(5 * attempt));
        continue;
      }
      switch (outcome) {
        case swap_outcome::swapped:
          progress_.swapped = true;
          owner_.announce_progress();
          break;
        case swap_outcome::differs:
          spdlog::warn(
              "projection {}: the rebuilt view differs from the live one ({}); not "
              "swapped, and the rebuilt view is dropped",
              name_, progress_.difference);
          owner_.discard_rebuild(name_);
          break;
        case swap_outcome::live_moved:
          if (attempt >= 1000)
            throw error_exception(
                {errc::unavailable,
                 fmt::format("rebuild of '{}' could not catch the live view", name_),
                 {}});
          continue;
        case swap_outcome::lost:
          throw error_exception(
              {errc::conflict,
               fmt::format("another rebuild of '{}' moved or swapped the same shadow", name_),
               {}});
      }
      report(true);
      return;
    }
  }

  // The swap, in one transaction: the live view's table first (renamed away, which waits for
  // a live batch writing it), then the rebuild's row, then the checkpoint — the order of a live
  // batch, which writes its view before it moves its checkpoint (the other order deadlocks on
  // PostgreSQL). When the live view got further than the shadow meanwhile, nothing changes:
  // the shadow is brought there (outside the swap: the log is read on other connections) and
  // the swap tried again. Otherwise the shadow is optionally compared with the live view
  // brought to its position, and renamed into its place; the checkpoint records the shadow's
  // position and version.
  swap_outcome swap() {
    const auto& live = p_.def.table();
    const auto retired = fmt::format("{}_retired_{}", live.substr(0, 40), base36(unix_ms()));
    // The live view's units: the shadow must have got as far as the furthest of them.
    const auto units_before = owner_.unit_checkpoints(p_);
    position_token live_before, live_least;
    for (std::size_t i = 0; i < units_before.size(); ++i) {
      const auto at = token_of(units_before[i].transaction_id, units_before[i].position);
      if (live_before < at) live_before = at;
      if (i == 0 || at < live_least) live_least = at;
    }
    if (at_ < live_before) {
      fill(std::numeric_limits<std::size_t>::max(), live_before);
      return swap_outcome::live_moved;
    }
    // Verify: the events that bring the live view (each unit of it) to the shadow's position,
    // read beforehand.
    std::vector<stored_event> live_gap;
    if (options_.verify && live_least < at_ && !set_based_) {
      live_gap = owner_.db_.read_events(live_least, std::numeric_limits<std::int32_t>::max());
      const bool same_units = units_before.size() == p_.units.size();
      std::erase_if(live_gap, [&](const stored_event& e) {
        if (at_ < e.position) return true;
        for (std::size_t i = 0; same_units && i < units_before.size(); ++i)
          if (projector::in_unit(p_, i, e.stream))
            return !(token_of(units_before[i].transaction_id, units_before[i].position) <
                     e.position);
        return false;
      });
    }
    swap_outcome outcome = swap_outcome::swapped;
    progress_.difference.clear();
    writing(views_, [&](write_transaction& tx, write_context& ctx) {
      tx.exec(fmt::format("alter table {} rename to {}", live, retired), {});
      // Taken for this swap (a rebuild running beside it would find it gone).
      if (ctx.exec("delete from cleave_rebuilds where name = $1 and shadow = $2 and "
                   "transaction_id = $3 and position = $4",
                   name_, state_.shadow, tx_of(at_), pos_of(at_)) != 1) {
        outcome = swap_outcome::lost;
        return false;
      }
      const auto [own, prefix, length] = unit_rows_args(name_);
      ctx.exec(fmt::format("update cleave_checkpoints set position = position {}", unit_rows_where),
               own, prefix, length);
      const auto rows = ctx.many<unit_row>(fmt::format("{} {}", unit_row_select, unit_rows_where),
                                           own, prefix, length);
      for (const auto& before : units_before) {
        const bool same = std::any_of(rows.begin(), rows.end(), [&](const unit_row& r) {
          return r.name == before.name && r.transaction_id == before.transaction_id &&
                 r.position == before.position;
        });
        if (!same) {
          outcome = swap_outcome::live_moved;
          return false;
        }
      }
      const auto live_at = live_least;
      const auto live_version = recorded_version(ctx, name_);
      if (options_.verify) {
        if (live_version != p_.version) {
          progress_.difference = fmt::format(
              "not compared: the live view is of another version ({}, the rebuilt one {})",
              live_version, p_.version);
        } else {
          if (set_based_)
            owner_.apply_set_based(p_, tx, retired, live_at, at_);
          else if (!live_gap.empty())
            owner_.apply_batch(p_, tx, retired, live_gap, name_, 1);
          progress_.difference =
              describe_difference(tx, retired, state_.shadow, progress_.differences);
          if (progress_.differences != 0) {
            outcome = swap_outcome::differs;
            return false;
          }
        }
      }
      // The projection's row and its units (a new partitioning's made, another's dropped) all
      // stand at the shadow's position; their epochs stay, and so do the leases on them.
      ctx.exec(
          "update cleave_checkpoints set transaction_id = $2, position = $3, version = $4 where "
          "name = $1",
          name_, tx_of(at_), pos_of(at_), p_.version);
      if (p_.units.size() > 1)
        for (const auto& unit : p_.units)
          ctx.exec(
              "insert into cleave_checkpoints(name, transaction_id, position, version) values "
              "($1, $2, $3, $4) on conflict(name) do update set transaction_id = "
              "excluded.transaction_id, position = excluded.position, version = excluded.version",
              unit, tx_of(at_), pos_of(at_), p_.version);
      for (const auto& r : rows)
        if (r.name != name_ &&
            std::find(p_.units.begin(), p_.units.end(), r.name) == p_.units.end())
          ctx.exec("delete from cleave_checkpoints where name = $1", r.name);
      tx.exec(fmt::format("alter table {} rename to {}", state_.shadow, live), {});
      // Dead letters now are the rebuild's: the old view's no longer apply.
      ctx.exec(
          fmt::format("delete from cleave_dead_letters where {}", of_projection_sql("projection")),
          own, prefix, length);
      ctx.exec("update cleave_dead_letters set projection = $1 where projection = $2", name_,
               state_.shadow);
      ctx.exec(
          "insert into cleave_retired_views(name, projection, drop_after_ms) values ($1, $2, $3)",
          retired, name_, unix_ms() + owner_.opts_.retired_grace.count());
      return true;
    });
    return outcome;
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

void projector::check_rebuildable(std::string_view name) const {
  if (find_memory(name))
    throw error_exception(
        {errc::validation,
         fmt::format("'{}' is an in-memory view: it is built from the log each time its process "
                     "starts, so there is no table to rebuild",
                     name),
         {}});
  const auto& p = find(name);
  if (!p.def.not_rebuildable_reason().empty())
    throw error_exception(
        {errc::validation,
         fmt::format("projection '{}' cannot be rebuilt: {}", name, p.def.not_rebuildable_reason()),
         {}});
  if (p.def.mode() == projection_mode::materialized) return;
  if (p.def.mode() != projection_mode::async || p.def.schema_sql().empty())
    throw error_exception(
        {errc::validation,
         fmt::format("projection '{}' cannot be rebuilt: only an async projection with a schema "
                     "has a view to rebuild beside the live one",
                     name),
         {}});
}

std::size_t projector::upgrade_step(const entry& p, std::size_t budget) {
  const auto live =
      reading(*p.views, [&](read_context& ctx) { return recorded_version(ctx, p.def.name()); });
  if (live == p.version) {  // another process swapped it in
    p.upgrading->store(false);
    return 0;
  }
  // Each step is one chunk of the largest size: a step starts afresh (from the rebuild's row), so
  // chunks that grew from a small first one would shrink again at every step.
  rebuild_options step;
  step.chunk = budget;
  const auto progress = rebuilding(*this, p, step).advance(budget);
  if (progress.swapped) {
    p.upgrading->store(false);
    spdlog::info("projection {}: version {} is live (the swap took {:.1f} ms)", p.def.name(),
                 p.version, progress.swap_ms);
    return progress.applied + 1;  // a step taken even when no event was left to apply
  }
  return progress.applied;
}

void projector::drop_retired() {
  std::vector<store*> stores;
  for (const auto& p : projections_)
    if (std::find(stores.begin(), stores.end(), p.views) == stores.end()) stores.push_back(p.views);
  for (auto* views : stores) {
    const auto due = reading(*views, [&](read_context& ctx) {
      return ctx.many<std::string>(
          "select name from cleave_retired_views where drop_after_ms <= $1", unix_ms());
    });
    for (const auto& table : due) {
      writing(*views, [&](write_transaction& tx, write_context& ctx) {
        tx.exec(fmt::format("drop table if exists {}", table), {});
        ctx.exec("delete from cleave_retired_views where name = $1", table);
        return true;
      });
      spdlog::info("projector: dropped {}, a view's previous version", table);
    }
  }
}

rebuild_progress projector::rebuild(std::string_view name, const rebuild_options& options) {
  check_rebuildable(name);
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
  const auto reserved = options.reservation ? nullptr : reserve_rebuild(name);
  if (!options.reservation && !reserved)
    throw error_exception(
        {errc::conflict,
         fmt::format("'{}' is being rebuilt already (by this or another process)", name),
         {}});
  auto done = rebuilding(*this, p, options).run();
  if (done.swapped) p.upgrading->store(false);  // the registered version is live
  return done;
}

std::unique_ptr<lease> projector::reserve_rebuild(std::string_view name) {
  // (Whatever the projector's lease is called, or when it has none: rebuilds of one view
  // exclude each other.)
  return db_.try_lease(fmt::format("cleave.rebuild.{}", name));
}

void projector::discard_rebuild(std::string_view name) {
  const auto& p = find(name);
  writing(*p.views, [&](write_transaction& tx, write_context& ctx) {
    // The row before the shadow table, as the chunks and the swap take them.
    auto r = ctx.one<rebuild_row>(
        fmt::format("select {} from cleave_rebuilds where name = $1", rebuild_columns), name);
    ctx.exec("delete from cleave_rebuilds where name = $1", name);
    if (r) {
      tx.exec(fmt::format("drop table if exists {}", r->shadow), {});
      ctx.exec("delete from cleave_dead_letters where projection = $1", r->shadow);
    }
    return true;
  });
}

}  // namespace cleave
