#pragma once
// The units this process holds, where projector processes share them (a database with many
// writers): a thread that claims, renews and releases unit leases in cleave_checkpoints. Internal
// to src/read.
//
// Every quarter of projector_options::unit_lease it marks this process alive in each group it
// runs (cleave_projector_nodes), renews the leases it holds, and evens out: it holds at most
// ⌈units / live processes⌉ of a group's units, releasing the surplus (a process joined) and
// claiming free or expired units up to that share (a process left, died or stalled). A claim
// raises the unit's epoch; batches commit only under the epoch they read, so a process that lost
// a unit cannot commit for it afterwards. Time is the database's clock.

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <cleave/read/projector.hpp>

namespace cleave {

class projector::claims {
 public:
  // Shares the units of the projections in `groups` ("" the main one) of `owner`.
  claims(projector& owner, std::vector<std::string> groups);
  // Stops renewing and hands every unit held back (the others take them at once).
  ~claims();
  claims(const claims&) = delete;
  claims& operator=(const claims&) = delete;

  // The epoch under which this process holds `unit` now, by its own reckoning of the lease
  // (which the database's may end sooner: the epoch check at commit is what fences).
  std::optional<std::int64_t> epoch_of(std::string_view unit) const;
  // Whether it holds every unit of the groups it runs.
  bool holds_all() const;

 private:
  struct held_unit {
    std::int64_t epoch = 0;
    clock::time_point until;  // renewal time + lease: after it, no longer taken as held
  };
  struct unit_ref {
    const entry* p;
    std::string name;
  };
  void run();
  // One round: alive, renew, even out. Returns whether it claimed a unit.
  bool tick();
  // Claims `u` when it is free or its lease has run out; whether it did.
  bool claim(const unit_ref& u);
  // The units of `group`'s projections that can be claimed now (not upgrading).
  std::vector<unit_ref> units_of(const std::string& group);
  // `sql` with `{now}` as store `s` spells the database's clock (Unix ms).
  static std::string with_now(const store& s, std::string_view sql);

  projector& owner_;
  const std::vector<std::string> groups_;
  const std::chrono::milliseconds lease_;
  mutable std::mutex mutex_;
  std::map<std::string, held_unit, std::less<>> held_;  // under mutex_
  std::size_t units_ = 0;                               // of the groups run; under mutex_
  std::mutex stop_mutex_;
  std::condition_variable stop_;
  bool stopping_ = false;  // under stop_mutex_
  std::uint64_t rounds_ = 0;
  std::thread thread_;
};

}  // namespace cleave
