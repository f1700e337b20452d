// Checkpoints: where each unit of a projection has got to in the log, read from its view store,
// and moved only by a compare-and-set (of position and lease epoch) in the same transaction as
// the batch that got it there. A projection stands where the least of its units does.

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cleave/core/detail/string_hash.hpp>
#include "internal.hpp"

namespace cleave {

using namespace read_detail;

bool projector::in_unit(const entry& p, std::size_t index, std::string_view stream) {
  return p.units.size() < 2 || cleave::detail::stable_hash(stream) % p.units.size() == index;
}

std::vector<unit_row> projector::unit_checkpoints(const entry& p) {
  auto rows = reading(*p.views, [&](read_context& ctx) {
    return std::apply(
        [&](const auto&... args) {
          return ctx.many<unit_row>(fmt::format("{} {}", unit_row_select, unit_rows_where),
                                    args...);
        },
        unit_rows_args(p.def.name()));
  });
  // The live view's units: those of the live version (the projection's own row holds it) — the
  // registered partitioning's, or while a new one is built beside it, the one before (the
  // projection's own row when that was not partitioned).
  const auto own = std::find_if(rows.begin(), rows.end(),
                                [&](const unit_row& r) { return r.name == p.def.name(); });
  if (own == rows.end()) return {};
  const auto live_version = own->version;
  std::vector<unit_row> out;
  for (const auto& unit : p.units)  // in unit order
    for (const auto& r : rows)
      if (r.name == unit && r.name != p.def.name() && r.version == live_version) out.push_back(r);
  if (out.empty())
    for (const auto& r : rows)
      if (r.name != p.def.name() && r.version == live_version) out.push_back(r);
  if (out.empty()) out.push_back(*own);
  return out;
}

position_token projector::checkpoint(std::string_view name) {
  if (const auto* m = find_memory(name)) return m->checkpoint();
  const auto& p = find(name);
  if (p.def.mode() == projection_mode::inline_) return db_.head();
  return least_checkpoint(unit_checkpoints(p));
}

bool projector::commit_batch(const entry& p, std::string_view unit, std::int64_t epoch,
                             position_token from, position_token to,
                             function_ref<void(write_transaction&)> apply) {
  const bool moved = writing(*p.views, [&](write_transaction& tx, write_context& ctx) {
    try {
      apply(tx);
    } catch (const std::exception&) {
      // A handler failed: on a view that moved on without this batch (another projector's
      // batch, or a rebuild swapped in holding these events already) that is no failure of its.
      // (When the failure ended the transaction — a fold's, a set-based statement's — the
      // reading fails too, and the failure stands.)
      bool moved_on = false;
      try {
        const auto at = ctx.one<unit_row>(
            fmt::format("{} where name = $1 and version = $2", unit_row_select), unit, p.version);
        moved_on = !at || token_of(at->transaction_id, at->position) != from || at->epoch != epoch;
      } catch (const std::exception&) {
      }
      if (moved_on) return false;
      throw;
    }
    // Another projector that moved the checkpoint first wins: its batch stands, this one not.
    // So does one that claimed the unit since (a raised epoch), and a view of another version
    // (swapped in by a process of another release).
    return ctx.exec(
               "update cleave_checkpoints set transaction_id = $2, position = $3 "
               "where name = $1 and transaction_id = $4 and position = $5 and version = $6 and "
               "epoch = $7",
               unit, tx_of(to), pos_of(to), tx_of(from), pos_of(from), p.version, epoch) == 1;
  });
  if (moved) announce_progress();
  return moved;
}

}  // namespace cleave
