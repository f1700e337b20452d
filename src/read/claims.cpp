// The unit leases of a projector process where processes share the units (see claims.hpp).

#include "claims.hpp"

#include <algorithm>
#include <set>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cleave/core/detail/string_hash.hpp>
#include <cleave/store/detail/sql_text.hpp>
#include "internal.hpp"

namespace cleave {

using namespace read_detail;

namespace {

struct claimed_row {
  std::string name;
  std::int64_t epoch = 0;
  std::string version;
};
CLEAVE_RECORD(claimed_row, name, epoch, version)

}  // namespace

projector::claims::claims(projector& owner, std::vector<std::string> groups)
    : owner_(owner),
      groups_(std::move(groups)),
      lease_(std::max(owner.opts_.unit_lease, std::chrono::milliseconds(40))) {
  thread_ = std::thread([this] { run(); });
}

projector::claims::~claims() {
  {
    std::lock_guard lock(stop_mutex_);
    stopping_ = true;
  }
  stop_.notify_all();
  thread_.join();
  // Handing the units back lets the other processes take them on their next round rather than
  // after the lease; a process that dies hands nothing back and they wait for the lease.
  std::set<store*> stores{&owner_.db_};
  for (const auto& p : owner_.projections_) stores.insert(p.views);
  for (auto* s : stores) {
    try {
      writing(*s, [&](write_transaction&, write_context& ctx) {
        ctx.exec("update cleave_checkpoints set owner = null, lease_until_ms = 0 where owner = $1",
                 owner_.node_);
        if (s == &owner_.db_)
          ctx.exec("delete from cleave_projector_nodes where node = $1", owner_.node_);
        return true;
      });
    } catch (const std::exception& e) {
      spdlog::warn("projector: handing back units: {}", e.what());
    }
  }
}

std::optional<std::int64_t> projector::claims::epoch_of(std::string_view unit) const {
  std::lock_guard lock(mutex_);
  const auto it = held_.find(unit);
  if (it == held_.end() || clock::now() >= it->second.until) return std::nullopt;
  return it->second.epoch;
}

bool projector::claims::holds_all() const {
  std::lock_guard lock(mutex_);
  const auto now = clock::now();
  return units_ > 0 &&
         static_cast<std::size_t>(std::count_if(held_.begin(), held_.end(), [&](const auto& h) {
           return now < h.second.until;
         })) >= units_;
}

std::string projector::claims::with_now(const store& s, std::string_view sql) {
  return cleave::detail::replace_all(sql, "{now}", s.now_ms_sql());
}

void projector::claims::run() {
  for (;;) {
    bool gained = false;
    try {
      gained = tick();
    } catch (const std::exception& e) {
      spdlog::warn("projector: sharing units: {}", e.what());
    }
    if (gained) owner_.notify();
    std::unique_lock lock(stop_mutex_);
    if (stop_.wait_for(lock, lease_ / 4, [&] { return stopping_; })) return;
  }
}

std::vector<projector::claims::unit_ref> projector::claims::units_of(const std::string& group) {
  std::vector<unit_ref> out;
  for (const auto& p : owner_.projections_) {
    if (p.def.mode() != projection_mode::async || p.def.group_name() != group) continue;
    if (p.upgrading->load()) {
      // Swapped in by the leader (maybe in another process): its units are there to claim.
      const auto live =
          reading(*p.views, [&](read_context& ctx) { return recorded_version(ctx, p.def.name()); });
      if (live != p.version) continue;
      p.upgrading->store(false);
    }
    for (const auto& u : p.units) out.push_back({&p, u});
  }
  return out;
}

bool projector::claims::tick() {
  const auto& node = owner_.node_;
  const auto lease_ms = static_cast<std::int64_t>(lease_.count());
  auto& db = owner_.db_;
  // Renewed: every unit it holds (also one its lease ran out on that no one claimed since: its
  // epoch is unchanged, so no one else committed for it). A unit of another version (a process
  // of another release swapped its view) is handed back.
  std::map<std::string, unit_ref, std::less<>> units;
  std::vector<std::vector<unit_ref>> per_group;
  std::set<store*> stores;
  for (const auto& g : groups_) {
    per_group.push_back(units_of(g));
    for (const auto& u : per_group.back()) {
      units.emplace(u.name, u);
      stores.insert(u.p->views);
    }
  }
  std::map<std::string, held_unit, std::less<>> held;
  std::vector<std::pair<store*, std::string>> strays;  // held, but not a unit it runs
  for (auto* s : stores) {
    std::vector<claimed_row> rows;
    const auto renewed_at = clock::now();
    writing(*s, [&](write_transaction&, write_context& ctx) {
      rows = ctx.many<claimed_row>(
          with_now(*s,
                   "update cleave_checkpoints set lease_until_ms = {now} + $2 where owner = $1 "
                   "returning name, epoch, coalesce(version, '') as version"),
          node, lease_ms);
      return true;
    });
    for (const auto& r : rows) {
      const auto it = units.find(r.name);
      if (it != units.end() && r.version == it->second.p->version)
        held[r.name] = {r.epoch, renewed_at + lease_};
      else
        strays.emplace_back(s, r.name);
    }
  }
  // Alive in each group (the share of each process is counted from these) — once its leases are
  // renewed: a process that cannot renew them takes no share.
  writing(db, [&](write_transaction&, write_context& ctx) {
    for (const auto& g : groups_)
      ctx.exec(with_now(db,
                        "insert into cleave_projector_nodes(node, grp, seen_ms) values ($1, "
                        "$2, {now}) on conflict(node, grp) do update set seen_ms = "
                        "excluded.seen_ms"),
               node, g);
    if (rounds_++ % 64 == 0)  // processes gone for a minute
      ctx.exec(
          with_now(db, "delete from cleave_projector_nodes where seen_ms < {now} - 60000 - $1"),
          lease_ms);
    return true;
  });
  // Its share of each group: the surplus released, then free units claimed up to it.
  std::vector<unit_ref> to_release;
  std::vector<std::pair<std::vector<unit_ref>, std::size_t>> to_claim;  // candidates, how many
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    const auto& group_units = per_group[g];
    if (group_units.empty()) continue;
    const auto live = std::max<std::int64_t>(
        1, reading(db, [&](read_context& ctx) {
          return ctx
              .one<std::int64_t>(with_now(db,
                                          "select count(*) from cleave_projector_nodes where "
                                          "grp = $1 and seen_ms >= {now} - $2"),
                                 groups_[g], lease_ms)
              .value_or(1);
        }));
    const auto share =
        (group_units.size() + static_cast<std::size_t>(live) - 1) / static_cast<std::size_t>(live);
    std::vector<unit_ref> mine, others;
    for (const auto& u : group_units) (held.contains(u.name) ? mine : others).push_back(u);
    while (mine.size() > share) {
      to_release.push_back(mine.back());
      held.erase(mine.back().name);
      mine.pop_back();
    }
    // Starting at a place of its own in the list, so processes do not all try the same units.
    if (!others.empty())
      std::rotate(others.begin(),
                  others.begin() + static_cast<std::ptrdiff_t>(cleave::detail::stable_hash(node) %
                                                               others.size()),
                  others.end());
    if (mine.size() < share) to_claim.emplace_back(std::move(others), share - mine.size());
  }
  {
    std::lock_guard lock(mutex_);
    held_ = held;
    units_ = units.size();
  }
  std::vector<std::pair<store*, std::string>> releases = std::move(strays);
  for (const auto& u : to_release) releases.emplace_back(u.p->views, u.name);
  for (const auto& [s, name] : releases)
    writing(*s, [&](write_transaction&, write_context& ctx) {
      ctx.exec(
          "update cleave_checkpoints set owner = null, lease_until_ms = 0 where name = $1 and "
          "owner = $2",
          name, node);
      return true;
    });
  // The units free now (none held, or its lease run out), to try only those.
  std::set<std::string, std::less<>> free;
  if (!to_claim.empty())
    for (auto* s : stores)
      for (auto& name : reading(*s, [&](read_context& ctx) {
             return ctx.many<std::string>(with_now(
                 *s,
                 "select name from cleave_checkpoints where owner is null or lease_until_ms < "
                 "{now}"));
           }))
        free.insert(std::move(name));
  bool gained = false;
  for (auto& [candidates, wanted] : to_claim)
    for (const auto& u : candidates) {
      if (wanted == 0) break;
      if (free.contains(u.name) && claim(u)) {
        --wanted;
        gained = true;
      }
    }
  return gained;
}

bool projector::claims::claim(const unit_ref& u) {
  const auto claimed_at = clock::now();
  std::optional<std::int64_t> epoch;
  writing(*u.p->views, [&](write_transaction&, write_context& ctx) {
    if (auto claimed = ctx.one<std::int64_t>(
            with_now(*u.p->views,
                     "update cleave_checkpoints set owner = $2, epoch = epoch + 1, "
                     "lease_until_ms = {now} + $3 where name = $1 and version = $4 and (owner is "
                     "null or lease_until_ms < {now}) returning epoch"),
            u.name, owner_.node_, static_cast<std::int64_t>(lease_.count()), u.p->version))
      epoch = *claimed;
    return true;
  });
  if (!epoch) return false;  // a live process holds it
  spdlog::info("projector: claimed {} (epoch {})", u.name, *epoch);
  std::lock_guard lock(mutex_);
  held_[u.name] = {*epoch, claimed_at + lease_};
  return true;
}

}  // namespace cleave
