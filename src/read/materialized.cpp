// Materialized views: refreshed by the store (a materialized view where the database has them,
// else a table filled again) when the policy says so or a reader waits, with the checkpoint
// moved to what the refresh is sure to have seen.

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "internal.hpp"

namespace cleave {

using namespace read_detail;

std::size_t projector::refresh_materialized(bool force) {
  const bool wanted = refresh_wanted_.exchange(false);
  std::size_t refreshed = 0;
  for (const auto& p : projections_) {
    if (p.def.mode() != projection_mode::materialized) continue;
    const auto& name = p.def.name();
    const auto at = checkpoint(name);
    const auto behind = db_.distance(at);
    if (behind.events == 0) continue;
    const auto& policy = p.def.refresh();
    const bool due = force || wanted || behind.events >= policy.after_events ||
                     unix_ms() - behind.oldest_recorded_at_ms >= policy.after.count();
    if (!due) continue;
    // Everything at or before `upto` has committed, so the refresh, which starts after this,
    // sees it: the recorded position never claims more than the view holds.
    const auto upto = db_.readable_head();
    writing(db_, [&](write_transaction& tx, write_context& ctx) {
      db_.refresh_materialized_view(tx, p.def.table(), p.def.select_sql());
      ctx.exec(
          "update cleave_checkpoints set transaction_id = $2, position = $3 where name = $1 and "
          "(transaction_id < $2 or (transaction_id = $2 and position < $3))",
          name, tx_of(upto), pos_of(upto));
      return true;
    });
    ++refreshed;
  }
  if (refreshed > 0) {
    announce_progress();
  }
  return refreshed;
}

}  // namespace cleave
