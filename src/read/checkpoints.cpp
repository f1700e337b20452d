// Checkpoints: where each projection has got to in the log, read from its view store, and moved
// only by a compare-and-set in the same transaction as the batch that got it there.

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "internal.hpp"

namespace cleave {

using namespace read_detail;

position_token projector::checkpoint(std::string_view name) {
  if (const auto* m = find_memory(name)) return m->checkpoint();
  const auto& p = find(name);
  if (p.def.mode() == projection_mode::inline_) return db_.head();
  return reading(*p.views, [&](read_context& ctx) {
    auto row = ctx.one<token_row>(
        "select transaction_id, position from cleave_checkpoints where name = $1", name);
    return row ? token_of(row->transaction_id, row->position) : position_token{};
  });
}

bool projector::commit_batch(const entry& p, position_token from, position_token to,
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
        const auto at = ctx.one<token_row>(
            "select transaction_id, position from cleave_checkpoints where name = $1 and "
            "version = $2",
            p.def.name(), p.version);
        moved_on = !at || token_of(at->transaction_id, at->position) != from;
      } catch (const std::exception&) {
      }
      if (moved_on) return false;
      throw;
    }
    // Another projector that moved the checkpoint first wins: its batch stands, this one not.
    // So does a view of another version (swapped in by a process of another release).
    return ctx.exec(
               "update cleave_checkpoints set transaction_id = $2, position = $3 "
               "where name = $1 and transaction_id = $4 and position = $5 and version = $6",
               p.def.name(), tx_of(to), pos_of(to), tx_of(from), pos_of(from), p.version) == 1;
  });
  if (moved) announce_progress();
  return moved;
}

}  // namespace cleave
