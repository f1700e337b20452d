// The async worker: holds the lease (one leader among processes), catches up and refreshes,
// then sleeps until a commit wakes it (the store's commit watch) or the poll passes.

#include <cleave/read/projector.hpp>

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "claims.hpp"
#include "internal.hpp"

namespace cleave {

using namespace read_detail;

std::chrono::milliseconds projector::next_wait() const {
  // A materialized view's time-based refresh must not wait for the slow poll.
  auto wait = opts_.poll;
  for (const auto& p : projections_)
    if (p.def.mode() == projection_mode::materialized)
      wait = std::min(wait, std::max(p.def.refresh().after, std::chrono::milliseconds(1)));
  if (const auto next = next_task_ms_.load(); next != INT64_MAX) {
    const auto until = std::chrono::milliseconds(next - cleave::detail::unix_now_ms());
    wait = std::max(std::chrono::milliseconds(0), std::min(wait, until));
  }
  return wait;
}

void projector::add_leader_task(leader_task task) {
  leader_tasks_.push_back(std::move(task));
}

void projector::run_leader_tasks() {
  std::int64_t soonest = INT64_MAX;
  for (auto& task : leader_tasks_) {
    try {
      if (auto next = task()) soonest = std::min(soonest, *next);
      continue;
    } catch (const error_exception& e) {
      spdlog::error("projector: {}", e.error().describe());
    } catch (const std::exception& e) {
      spdlog::error("projector: {}", e.what());
    }
    soonest = std::min(soonest, cleave::detail::unix_now_ms() + 1000);  // try again in a second
  }
  next_task_ms_ = soonest;
}

std::size_t projector::catch_up(std::size_t batch) {
  std::size_t applied = 0;
  for (;;) {  // until every upgrade has swapped (each call takes a step of them)
    const auto n = catch_up_async(batch);
    applied += n;
    const bool upgrading = std::any_of(projections_.begin(), projections_.end(),
                                       [](const entry& p) { return p.upgrading->load(); });
    if (!upgrading || n == 0) break;
  }
  refresh_materialized(true);
  drop_retired();
  run_leader_tasks();
  return applied;
}

std::size_t projector::try_upgrade_step(const entry& p) {
  // An upgrade that fails (a new schema that does not run, another process's rebuild of the
  // same view) holds back its own view only: it is logged and tried again on the next pass.
  try {
    return upgrade_step(
        p, p.def.batch_sql_text().empty() ? opts_.max_batch : opts_.max_set_based_batch);
  } catch (const error_exception& e) {
    spdlog::error("projection {}: building version {}: {}", p.def.name(), p.version,
                  e.error().describe());
  }
  return 0;
}

std::size_t projector::catch_up_async(std::size_t batch, const std::string* group,
                                      const claims* held) {
  if (batch == 0) batch = opts_.batch;
  std::size_t applied = 0;
  for (const auto& p : projections_) {
    if (p.def.mode() != projection_mode::async) continue;
    if (group && p.def.group_name() != *group) continue;
    if (!p.upgrading->load()) {
      for (std::size_t i = 0; i < p.units.size(); ++i) {
        if (!held) {
          applied += catch_up_unit(p, i, batch);
        } else if (const auto epoch = held->epoch_of(p.units[i])) {
          applied += catch_up_unit(p, i, batch, epoch);
        }
      }
      continue;
    }
    if (!held) applied += try_upgrade_step(p);  // (shared units: the leader's, every group's)
  }
  if (!group || group->empty())
    for (auto* m : memory_views_) applied += catch_up_memory(*m, batch);
  return applied;
}

void projector::log_worker_failure() {
  try {
    throw;
  } catch (const error_exception& e) {
    spdlog::error("projector: {}", e.error().describe());
  } catch (const std::exception& e) {
    spdlog::error("projector: {}", e.what());
  } catch (...) {
    spdlog::error("projector: an unknown failure");
  }
}

void projector::sleep_until_woken(worker_slot& slot, std::chrono::milliseconds longest) {
  std::unique_lock lock(wake_mutex_);
  wake_.wait_for(lock, longest, [&] { return slot.woken || !running_; });
  slot.woken = false;
}

void projector::run_shared_worker(worker_slot& slot) {
  // The units come from the claims; the main group's duties (and upgrades, of every group) from
  // a leader's lease, tried while another process holds it.
  const bool main = slot.group.empty();
  std::unique_ptr<lease> leader;
  auto leader_tried = clock::time_point{}, leader_checked = clock::time_point{};
  if (!main) slot.leading = true;
  // Whether it still leads, asked of the database at most every quarter second: before each of
  // the duties with effects of their own, as run_worker does.
  const auto leading_now = [&] {
    if (leader && clock::now() - leader_checked > std::chrono::milliseconds(250)) {
      leader_checked = clock::now();
      if (!leader->held()) {
        spdlog::warn("projector: lost the lease '{}'", opts_.lease);
        leader.reset();
      }
    }
    slot.leading = leader != nullptr;
    return leader != nullptr;
  };
  while (running_) {
    std::size_t applied = 0;
    try {
      applied = catch_up_async(0, &slot.group, claims_.get());
      if (main) {
        if (!leader && clock::now() - leader_tried >= opts_.standby_retry) {
          leader_tried = clock::now();
          leader = db_.try_lease(opts_.lease);
          if (leader) spdlog::info("projector: leading (lease '{}')", opts_.lease);
        }
        if (leading_now())
          for (const auto& p : projections_)
            if (p.upgrading->load()) applied += try_upgrade_step(p);
        if (leading_now()) {
          refresh_materialized(false);
          main_group_duties();
        }
      }
    } catch (...) {
      log_worker_failure();
    }
    if (applied > 0) continue;
    sleep_until_woken(slot, !main    ? opts_.poll
                            : leader ? next_wait()
                                     : std::min(next_wait(), opts_.standby_retry));
  }
  slot.leading = false;
}

void projector::notify() {
  {
    std::lock_guard lock(wake_mutex_);
    for (auto& w : workers_) w->woken = true;
  }
  wake_.notify_all();
}

bool projector::leading() const noexcept {
  // Only a process that runs every group, and leads each, applies every batch itself.
  std::lock_guard lock(wake_mutex_);
  return !workers_.empty() && workers_.size() == group_count_ &&
         std::all_of(workers_.begin(), workers_.end(),
                     [](const auto& w) { return w->leading.load(); }) &&
         (!claims_ || claims_->holds_all());
}

void projector::main_group_duties() {
  run_leader_tasks();
  if (clock::now() - retired_checked_ > std::chrono::seconds(1)) {
    retired_checked_ = clock::now();
    drop_retired();
  }
}

void projector::run_worker(worker_slot& slot) {
  if (claims_) return run_shared_worker(slot);
  const bool main = slot.group.empty();
  const std::string lease_name =
      opts_.lease.empty() || main ? opts_.lease : fmt::format("{}.{}", opts_.lease, slot.group);
  std::unique_ptr<lease> held;
  auto lease_checked = clock::time_point{};
  const auto lost = [&] {
    spdlog::warn("projector: lost the lease '{}'", lease_name);
    held.reset();
    slot.leading = false;
  };
  // Leader tasks and sinks have effects of their own (commands sent, messages published): a
  // worker that lost its lease (paused, cut off) finds out before it does them, at the cost of
  // a round trip at most every quarter second.
  const auto still_held = [&] {
    if (!held || clock::now() - lease_checked <= std::chrono::milliseconds(250)) return true;
    lease_checked = clock::now();
    return held->held();
  };
  while (running_) {
    if (!lease_name.empty() && !held) {
      try {
        held = db_.try_lease(lease_name);
      } catch (const std::exception& e) {
        spdlog::error("projector: taking the lease: {}", e.what());
      }
      if (!held) {
        std::unique_lock lock(wake_mutex_);
        wake_.wait_for(lock, opts_.standby_retry, [&] { return !running_.load(); });
        continue;
      }
      spdlog::info("projector: leading (lease '{}')", lease_name);
    }
    slot.leading = true;
    std::size_t applied = 0;
    try {
      if (!main && !still_held()) {
        lost();
        continue;
      }
      applied = catch_up_async(0, &slot.group);
      if (main) {
        refresh_materialized(false);
        if (!still_held()) {
          lost();
          continue;
        }
        main_group_duties();
      }
    } catch (...) {
      log_worker_failure();
    }
    if (applied > 0) continue;
    sleep_until_woken(slot, main ? next_wait() : opts_.poll);
    if (held && !held->held()) lost();
  }
  slot.leading = false;
}

void projector::start(std::vector<std::string> groups) {
  const auto known = this->groups();
  if (groups.empty()) groups = known;
  for (const auto& g : groups)
    if (std::find(known.begin(), known.end(), g) == known.end())
      throw std::invalid_argument(fmt::format("no projection is in group '{}'", g));
  if (running_.exchange(true)) return;
  std::vector<std::unique_ptr<worker_slot>> slots;
  for (const auto& g : groups) {
    slots.push_back(std::make_unique<worker_slot>());
    slots.back()->group = g;
  }
  // spdlog's registry made here, before the threads whose first lines may come at once (its
  // lazy start is not seen as synchronized from an uninstrumented library: TSan).
  (void)spdlog::default_logger_raw();
  auto held = shares_units() ? std::make_unique<claims>(*this, groups) : nullptr;
  {
    std::lock_guard lock(wake_mutex_);  // notify() and leading() read them from any thread
    workers_ = std::move(slots);
    group_count_ = known.size();
    claims_ = std::move(held);
  }
  watch_ = db_.watch_commits();
  watcher_ = std::thread([this] {
    while (running_) {
      watch_->wait_until(clock::now() + opts_.poll);
      if (running_) notify();
    }
  });
  for (auto& w : workers_) w->thread = std::thread([this, &slot = *w] { run_worker(slot); });
}

void projector::stop() {
  if (!running_.exchange(false)) return;
  notify();
  watch_->interrupt();
  for (auto& w : workers_) w->thread.join();
  std::unique_ptr<claims> held;
  {
    std::lock_guard lock(wake_mutex_);
    held = std::move(claims_);
  }
  held.reset();  // hands its units back (outside the lock: its thread may be notifying)
  watcher_.join();
  watch_.reset();
  std::lock_guard lock(wake_mutex_);
  workers_.clear();
}

}  // namespace cleave
