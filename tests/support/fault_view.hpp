#pragma once
// The view the fault tests kill projectors over: events counted per stream (a fold).

#include <string>
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

}  // namespace fault
