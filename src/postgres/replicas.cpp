// Read replicas: a monitor thread that samples the primary's WAL position and each standby's
// replay, so as to know how far behind (in bytes and in time) each one is; the routing of a read
// to a standby fresh enough for its consistency; and their status for the admin.

#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "store_impl.hpp"

namespace cleave::postgres {

namespace {

using detail::connection;
using detail::parse_lsn;

}  // namespace

namespace {

// How long a probe of a standby may take, and how often one that is down is probed.
constexpr std::chrono::milliseconds probe_bound{250}, down_probe_every{200};

}  // namespace

std::uint64_t store::impl::replay_lsn_of(impl& pool) {
  return pool.read(
      [](connection& conn) {
        auto r = conn.script("select coalesce(pg_last_wal_replay_lsn()::text, '0/0')");
        return parse_lsn(r.text(0, 0));
      },
      probe_bound);
}

void store::impl::start_replicas() {
  for (const auto& url : opts.replicas) {
    auto r = std::make_unique<replica>();
    options o = opts;
    o.url = url;
    o.replicas.clear();
    r->pool = std::make_unique<impl>(o);
    r->pool->replica_up = &r->up;
    r->url = url;
    replicas.push_back(std::move(r));
  }
  if (replicas.empty()) return;
  // Lag: the primary's WAL position sampled every 20 ms; a standby is as many seconds behind
  // as the oldest sample it has not replayed.
  monitor = std::thread([this] {
    std::deque<std::pair<clock::time_point, std::uint64_t>> samples;
    std::unique_lock lock(monitor_mutex);
    while (!monitor_stopping) {
      lock.unlock();
      try {
        const auto now = clock::now();
        const auto primary_lsn = read([](connection& conn) {
          return parse_lsn(conn.script("select pg_current_wal_lsn()::text").text(0, 0));
        });
        samples.emplace_back(now, primary_lsn);
        while (samples.size() > 3000) samples.pop_front();  // a minute
        for (auto& r : replicas) {
          // One that is down is probed now and then: each probe of one that does not answer
          // holds the samples of the others for its bound.
          if (!r->up && now - r->probed < down_probe_every) continue;
          r->probed = now;
          std::uint64_t at = 0;
          try {
            at = replay_lsn_of(*r->pool);
          } catch (const error_exception&) {
            r->up = false;  // set aside until a probe answers
            continue;
          }
          r->replay_lsn = at;
          r->lag_bytes = primary_lsn > at ? primary_lsn - at : 0;
          std::int64_t lag = 0;
          for (const auto& [when, lsn] : samples)
            if (lsn > at) {
              lag = std::chrono::duration_cast<std::chrono::microseconds>(now - when).count();
              break;
            }
          r->lag_us = lag;
          r->up = true;  // last: its figures are current when reads come back to it
        }
      } catch (const error_exception&) {
        // The primary is unreachable: keep the last figures.
      }
      lock.lock();
      monitor_wake.wait_for(lock, std::chrono::milliseconds(20), [&] { return monitor_stopping; });
    }
  });
}

void store::impl::stop_replicas() {
  {
    std::lock_guard lock(monitor_mutex);
    monitor_stopping = true;
  }
  monitor_wake.notify_all();
  if (monitor.joinable()) monitor.join();
}

// The replica to serve a read as fresh as `wanted` (by meta's deadline), or null for the
// primary.
store::impl::replica* store::impl::route(const request_meta& meta, const consistency& wanted) {
  if (replicas.empty()) return nullptr;
  using level = consistency::level;
  if (wanted.required == level::strong) return nullptr;
  const std::size_t n = replicas.size(), first = next_replica++ % n;
  auto pick = [&](auto&& fits) -> replica* {
    for (std::size_t i = 0; i < n; ++i) {
      auto& r = *replicas[(first + i) % n];
      if (fits(r)) return &r;
    }
    return nullptr;
  };
  // Within `max` of the primary, and answering.
  const auto near = [&](const replica& r, std::chrono::milliseconds max) {
    return r.up && std::chrono::microseconds(r.lag_us.load()) <= max;
  };
  if (wanted.required == level::eventual)
    return pick([&](const replica& r) { return near(r, opts.replica_max_lag); });
  if (wanted.required == level::bounded)
    return pick([&](const replica& r) {
      return near(r, std::min(opts.replica_max_lag, wanted.max_staleness));
    });
  // at_least: a standby that has replayed the token's commit LSN. Without an LSN (a token
  // from elsewhere) only the primary is sure to have it.
  const auto lsn = wanted.token.lsn();
  if (wanted.token.empty())
    return pick([&](const replica& r) { return near(r, opts.replica_max_lag); });
  if (lsn == 0) return nullptr;
  if (auto* r = pick([&](const replica& c) { return c.up && c.replay_lsn.load() >= lsn; }))
    return r;
  // Waiting is worth it only for one that answers and keeps up; else the primary, at once.
  if (!pick([&](const replica& r) { return near(r, opts.replica_max_lag); })) {
    if (opts.replica_fallback_to_primary) return nullptr;
    throw error_exception(
        {errc::unavailable,
         fmt::format("no replica has replayed the requested commit (LSN {:X}/{:X}), and none that "
                     "is up keeps up well enough to wait for",
                     lsn >> 32, lsn & 0xffffffff),
         {}});
  }
  // Before waiting for it: a commit the primary has not written yet was never issued here.
  if (lsn > read(
                [](connection& conn) {
                  return parse_lsn(conn.script("select pg_current_wal_lsn()::text").text(0, 0));
                },
                probe_bound))
    throw error_exception({errc::validation,
                           "the position token's commit LSN is past the primary's WAL: this "
                           "store has not issued it",
                           {}});
  const auto until = std::min(meta.deadline, clock::now() + opts.replica_wait);
  std::uint64_t closest = 0;
  for (;;) {
    for (std::size_t i = 0; i < n; ++i) {
      auto& r = *replicas[(first + i) % n];
      if (!r.up) continue;
      try {
        const auto at = replay_lsn_of(*r.pool);
        r.replay_lsn = std::max(r.replay_lsn.load(), at);
        if (at >= lsn) return &r;
        closest = std::max(closest, at);
      } catch (const error_exception&) {
        r.up = false;  // try the others
      }
    }
    if (clock::now() >= until) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (opts.replica_fallback_to_primary) return nullptr;
  throw error_exception(
      {errc::unavailable,
       fmt::format("no replica has replayed the requested commit (LSN {:X}/{:X}) within {} ms; "
                   "the closest is at {:X}/{:X}",
                   lsn >> 32, lsn & 0xffffffff, opts.replica_wait.count(), closest >> 32,
                   closest & 0xffffffff),
       {}});
}

std::vector<replica_status> store::replicas() {
  std::vector<replica_status> out;
  for (const auto& r : impl_->replicas) {
    replica_status s;
    s.url = r->url;
    s.replay_lsn = r->replay_lsn;
    s.lag_bytes = r->lag_bytes;
    s.up = r->up;
    s.lag_seconds = s.up ? static_cast<double>(r->lag_us.load()) / 1e6 : 0;
    s.set_aside = !s.up || std::chrono::microseconds(r->lag_us.load()) > options_.replica_max_lag;
    s.reads = r->reads;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace cleave::postgres
