#pragma once
// The view the fault tests kill projectors over: events counted per stream (a fold).

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <cleave/cleave.hpp>
#include <cleave/read/projection.hpp>

namespace fault {

struct ticked {
  std::string stream;
};
CLEAVE_EVENT(ticked, "fault.ticked", stream)

struct tick {
  std::string stream;
};
CLEAVE_COMMAND(tick, "fault.tick", stream)

inline cleave::result<void> on_tick(const tick& t, cleave::write_context& tx) {
  tx.emit(t.stream, ticked{t.stream});
  return {};
}

inline cleave::projection tally() {
  cleave::projection p{"tally"};
  p.schema("create table {view}(stream text primary key, n bigint not null)")
      .fold([](const std::vector<ticked>& events, cleave::view_context& v) {
        std::unordered_map<std::string, std::int64_t> counts;
        for (const auto& e : events) ++counts[e.stream];
        for (const auto& [stream, n] : counts)
          v.exec(
              "insert into {view}(stream, n) values ($1, $2) on conflict(stream) do update set "
              "n = {view}.n + excluded.n",
              stream, n);
      });
  return p;
}

struct noted {
  std::string stream;
};
CLEAVE_EVENT(noted, "fault.noted", stream)

// The same count kept by a handler per event (a round trip each), split into `partitions`
// units: the scale tests' view. While `*poison` is true, events of streams starting with 'p'
// fail (to park them); `slow` delays each event (to kill a replay half-way).
inline cleave::projection unit_tally(std::uint32_t partitions = 4,
                                     const std::atomic<bool>* poison = nullptr,
                                     std::chrono::milliseconds slow = {}) {
  cleave::projection p{"unit_tally"};
  p.schema("create table {view}(stream text primary key, n bigint not null)")
      .partitions(partitions)
      .on([poison, slow](const ticked& e, cleave::view_context& v) {
        if (poison && poison->load() && e.stream.starts_with('p'))
          throw std::runtime_error("poisoned stream " + e.stream);
        if (slow.count() > 0) std::this_thread::sleep_for(slow);
        v.exec(
            "insert into {view}(stream, n) values ($1, 1) on conflict(stream) do update set "
            "n = {view}.n + 1",
            e.stream);
      });
  return p;
}

}  // namespace fault
