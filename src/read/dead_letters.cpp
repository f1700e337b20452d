// Dead letters: events whose handler kept failing, parked so the projection could go on; listed
// and replayed on demand.

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "internal.hpp"

namespace cleave {

using namespace read_detail;

std::vector<projector::dead_letter> projector::dead_letters(std::string_view name) {
  const auto& p = find(name);
  const auto [own, prefix, length] = unit_rows_args(name);
  auto rows = reading(*p.views, [&](read_context& ctx) {
    return ctx.many<parked_row>(
        fmt::format("select transaction_id, position, type, payload, error from "
                    "cleave_dead_letters where {} order by transaction_id, position",
                    of_projection_sql("projection")),
        own, prefix, length);
  });
  std::vector<dead_letter> out;
  for (auto& r : rows) {
    auto payload = parse_json(r.payload);
    out.push_back({token_of(r.transaction_id, r.position), std::move(r.type),
                   payload ? std::move(*payload) : json(nullptr), std::move(r.error)});
  }
  return out;
}

std::size_t projector::dead_letters_through(std::string_view name, position_token token) {
  if (const auto* m = find_memory(name)) return m->failures().size();
  const auto& p = find(name);
  if (p.def.mode() == projection_mode::inline_) return 0;  // its failures fail the command
  const bool all = token.empty();
  const auto [own, prefix, length] = unit_rows_args(name);
  return reading(*p.views, [&](read_context& ctx) {
    return static_cast<std::size_t>(
        ctx.one<std::int64_t>(
               fmt::format("select count(*) from cleave_dead_letters where ({}) and "
                           "($4 = 1 or transaction_id < $5 or (transaction_id = $5 and "
                           "position <= $6))",
                           of_projection_sql("projection")),
               own, prefix, length, all ? 1 : 0, tx_of(token), pos_of(token))
            .value_or(0));
  });
}

std::size_t projector::replay_dead_letters(std::string_view name) {
  const auto& p = find(name);
  const auto [own, prefix, length] = unit_rows_args(name);
  std::size_t replayed = 0;
  // Each in a transaction of its own that applies it and deletes it: no checkpoint moves, so
  // a replay that stops half-way (a crash) leaves the rest parked and the units where they are.
  for (const auto& letter : dead_letters(name)) {
    try {
      bool taken = false;
      writing(*p.views, [&](write_transaction& tx, write_context& ctx) {
        stored_event e;
        e.position = letter.position;
        e.type = letter.type;
        e.payload = letter.payload;
        // Taken off the dead letters first: a replay running beside this one (another request,
        // another process) or a rebuild's swap that took it already leaves it alone.
        taken = ctx.exec(fmt::format("delete from cleave_dead_letters where ({}) and "
                                     "transaction_id = $4 and position = $5",
                                     of_projection_sql("projection")),
                         own, prefix, length, tx_of(e.position), pos_of(e.position)) == 1;
        if (!taken) return false;
        if (const auto* handler = p.def.handler_for(e.type)) {
          view_context view(tx, p.def.table(), e);
          (*handler)(e.payload, view);
        }
        return true;
      });
      if (!taken) continue;
    } catch (const std::exception& failure) {
      // Still failing: it stays parked.
      spdlog::warn("projection {}: replay of {} failed again: {}", name, letter.type,
                   failure.what());
      continue;
    }
    ++replayed;
  }
  return replayed;
}

}  // namespace cleave
