#include <cleave/read/consistency.hpp>

#include <algorithm>
#include <optional>

#include <fmt/format.h>

namespace cleave {

// The views waited for are current on the primary. With standbys, the read may go to one that has
// replayed every commit made so far (the head's LSN, past the views' batches); else the primary.
result<void> read_your_writes::read_views_now(const request_meta& meta, next_step next) {
  request_meta there = meta;
  there.consistency = strong();
  auto& log = projector_.log();
  if (!log.replicas().empty())
    if (const auto now = log.head(); now.lsn() != 0) there.consistency = at_least(now);
  return next(there);
}

namespace {

// " while its new version is built beside it (…position P)" — or nothing when
// the view is not being upgraded: why a view stands still.
std::string upgrade_note(projector& views, const std::string& name) {
  const auto s = views.status(name);
  if (!s.upgrading) return "";
  return s.rebuild_position ? fmt::format(
                                  " while its new version is built beside it (which has reached "
                                  "position {})",
                                  *s.rebuild_position)
                            : std::string(" while its new version is built beside it");
}

// The refusal of a read at least as fresh as `token`, a position this store has not issued.
std::unexpected<error> never_issued(position_token token) {
  return fail(errc::validation,
              fmt::format("the position token '{}' is past the end of the log: this store has "
                          "not issued it",
                          token.to_string()));
}

// "'a', 'b'" — or "none" for no names.
template <class Names, class Name>
std::string quoted_list(const Names& names, Name name_of) {
  std::string out;
  for (const auto& n : names) out += fmt::format("{}'{}'", out.empty() ? "" : ", ", name_of(n));
  return out.empty() ? "none" : out;
}

}  // namespace

result<void> read_your_writes::check(const query_bus& queries) const {
  const auto projections = projector_.names();
  std::vector<field_error> unknown;
  for (const auto& [query, views] : reads_) {
    if (!queries.handles(query))
      unknown.push_back({query, fmt::format("no query named '{}' has a handler; the queries are {}",
                                            query, quoted_list(queries.handled(), [](auto* info) {
                                              return info->wire_name;
                                            }))});
    for (const auto& view : views)
      if (std::find(projections.begin(), projections.end(), view) == projections.end())
        unknown.push_back(
            {query, fmt::format("reads '{}', which is no registered projection; the projections "
                                "are {}",
                                view, quoted_list(projections, [](const auto& n) { return n; }))});
  }
  if (unknown.empty()) return {};
  std::string message = "reads() names what does not exist:";
  for (const auto& u : unknown) message += fmt::format(" {}: {}.", u.path, u.message);
  return fail(errc::validation, std::move(message), std::move(unknown));
}

result<void> read_your_writes::refuse_parked(const std::string& view, position_token before,
                                             const consistency& wanted) const {
  if (wanted.accepts_dead_letters) return {};
  const auto parked = projector_.dead_letters_through(view, before);
  if (parked == 0) return {};
  return fail(errc::unavailable,
              fmt::format("the view '{}' has {} parked event{} (dead letters) that this read would "
                          "have to include, so it is not current; replay them once the handler is "
                          "fixed, or ask with eventual consistency or ;dead_letters=accept",
                          view, parked, parked == 1 ? "" : "s"));
}

position_token read_your_writes::position_of(std::string_view wire_name) const {
  auto it = reads_.find(wire_name);
  if (it == reads_.end() || it->second.empty()) return projector_.log().head();
  std::optional<position_token> lowest;
  for (const auto& view : it->second) {
    const auto at = projector_.checkpoint(view);
    if (!lowest || at < *lowest) lowest = at;
  }
  return *lowest;
}

position_token read_your_writes::position_in(std::string_view wire_name, read_session& tx) const {
  auto it = reads_.find(wire_name);
  if (it == reads_.end() || it->second.empty()) return projector_.log().head_in(tx);
  return {};
}

result<void> read_your_writes::handle(const message_ref& message, const request_meta& meta,
                                      next_step next) {
  const auto& wanted = meta.consistency;
  if (wanted.required == consistency::level::eventual) return next();
  auto it = reads_.find(message.info().wire_name);
  if (it == reads_.end()) {  // reads the write tables: current by construction,
    // though not as far as a position this store has not issued (refused, as for views).
    if (wanted.required == consistency::level::at_least && !wanted.token.empty() &&
        !projector_.could_have_issued(wanted.token))
      return never_issued(wanted.token);
    return next();
  }
  const auto deadline =
      meta.deadline == clock::time_point::max() ? clock::now() + budget_ : meta.deadline;
  if (wanted.required == consistency::level::bounded) {
    for (const auto& name : it->second) {
      const auto stale = projector_.wait_fresh(name, wanted.max_staleness, deadline);
      if (stale > wanted.max_staleness)
        return fail(errc::unavailable,
                    fmt::format("the view '{}' is {} ms behind the log{}, more than the {} ms "
                                "allowed; try again",
                                name, stale.count(), upgrade_note(projector_, name),
                                wanted.max_staleness.count()));
      if (auto parked = refuse_parked(name, {}, wanted); !parked) return parked;
    }
    return read_views_now(meta, next);
  }
  // at_least(token), or strong: at least every commit before this query.
  position_token token = wanted.token;
  if (wanted.required == consistency::level::strong) token = projector_.log().head();
  if (token.empty()) return next();
  for (const auto& name : it->second) {
    const auto at = projector_.wait_for(name, token, deadline);
    if (at < token) {
      if (!projector_.could_have_issued(token)) return never_issued(token);
      const auto behind = projector_.log().distance(at).events;
      return fail(errc::unavailable,
                  fmt::format("the view '{}' is at position {} ({} events behind the log{}), "
                              "short of the requested {}; try again",
                              name, at.to_string(), behind, upgrade_note(projector_, name),
                              token.to_string()));
    }
    if (auto parked = refuse_parked(name, token, wanted); !parked) return parked;
  }
  return read_views_now(meta, next);
}

read_your_writes::parking read_your_writes::park(std::string_view wire_name,
                                                 const consistency& wanted,
                                                 std::function<void()> ready, std::size_t limit) {
  parking out;
  if (wanted.required == consistency::level::eventual) return out;
  if (wanted.required == consistency::level::at_least && wanted.token.empty()) return out;
  auto it = reads_.find(wire_name);
  if (it == reads_.end()) return out;
  out.deadline = clock::now() + budget_;
  out.state = projector_.park(it->second, wanted, out.deadline, std::move(ready), limit)
                  ? parking::outcome::parked
                  : parking::outcome::full;
  return out;
}

}  // namespace cleave
