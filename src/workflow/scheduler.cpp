// The scheduler: sends what is due through the command bus, and settles each outcome — a sent
// command took its schedule with it; a refusal goes to the process manager that sent it (or stays
// as failed); a passing failure is tried again later.

#include <cleave/workflow/scheduler.hpp>

#include <cleave/store/detail/scopes.hpp>

#include <algorithm>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace cleave {

namespace {

constexpr std::string_view columns =
    "id, key, command, payload, origin, instance, subject, roles, state, due_ms, attempts, "
    "last_error";

struct state_count {
  std::string state;
  std::int64_t n = 0;
};
CLEAVE_RECORD(state_count, state, n)

}  // namespace

scheduler::scheduler(store& db, send_fn send, scheduler_options opts, clock_fn now)
    : db_(db), send_(std::move(send)), opts_(opts), now_(std::move(now)) {}

void scheduler::on_refused(std::string origin, refusal_fn handle) {
  refusals_[std::move(origin)] = std::move(handle);
}

void scheduler::runs_as(std::string origin, principal who) {
  runs_as_[std::move(origin)] = std::move(who);
}

std::string scheduler::command_id_of(std::string_view schedule_id) {
  // No transport can send this id: an anonymous idempotency key has no space, and a principal's
  // is scoped as "<subject> <key>" with subjects from the configuration.
  return fmt::format("@schedule {}", schedule_id);
}

std::optional<std::int64_t> scheduler::run_due() {
  const auto now = now_();
  // One query on a pass with nothing due (every pass of the worker runs this).
  const auto next = detail::reading(db_, [&](read_context& ctx) -> std::optional<std::int64_t> {
    auto soonest = ctx.one<std::optional<std::int64_t>>(
        "select min(due_ms) from cleave_schedules where state = 'pending'");
    return soonest ? *soonest : std::nullopt;
  });
  if (!next || *next > now) return next;
  const auto due = detail::reading(db_, [&](read_context& ctx) {
    return ctx.many<scheduled_command>(
        fmt::format("select {} from cleave_schedules where state = 'pending' and due_ms <= $1 "
                    "order by due_ms, id limit $2",
                    columns),
        now, static_cast<std::int64_t>(opts_.batch));
  });
  bool settled = true;  // false: an outcome could not be recorded (the row is due again)
  for (const auto& row : due) {
    // One schedule that fails in an unexpected way (a refusal handler that throws, say) is tried
    // again later like a passing failure; it never holds back the ones after it.
    try {
      send_one(row);
    } catch (const error_exception& e) {
      settled = settle_failure(row, e.error()) && settled;
    } catch (const std::exception& e) {
      settled = settle_failure(row, error{errc::internal, e.what(), {}}) && settled;
    }
  }
  // A database that takes reads but not writes (read-only after a failover, a full disk) must
  // not make the worker send the same rows in a loop: a second's pause.
  if (!settled) return now_() + 1000;
  if (due.size() == opts_.batch) return now;  // more are due
  return detail::reading(db_, [&](read_context& ctx) -> std::optional<std::int64_t> {
    auto soonest = ctx.one<std::optional<std::int64_t>>(
        "select min(due_ms) from cleave_schedules where state = 'pending'");
    return soonest ? *soonest : std::nullopt;
  });
}

void scheduler::send_one(const scheduled_command& row) {
  request_meta meta;
  meta.command_id = command_id_of(row.id);
  meta.schedule_id = row.id;
  meta.correlation_id = "schedule:" + row.id;
  if (auto who = runs_as_.find(row.origin); !row.origin.empty() && who != runs_as_.end()) {
    meta.principal = who->second;  // the manager's roles now, not when it scheduled
  } else {
    meta.principal.subject = row.subject;
    if (auto roles = parse_json(row.roles); roles && roles->is_array())
      for (const auto& r : *roles)
        if (r.is_string()) meta.principal.roles.push_back(r.get<std::string>());
  }
  meta.deadline = clock::now() + opts_.request_timeout;
  auto payload = parse_json(row.payload);
  if (!payload) {
    fail_for_good(row, payload.error());  // sending it again cannot help
    return;
  }
  auto outcome = send_(row.command, *payload, meta);
  if (outcome) return;  // its transaction took the schedule away
  const auto category = outcome.error().category;
  if (category == errc::rejected || category == errc::validation || category == errc::not_found)
    refused(row, outcome.error());
  else if (category == errc::unauthorized || category == errc::forbidden ||
           category == errc::idempotency_key_reused)
    fail_for_good(row, outcome.error());  // not the manager's business rule: a setup to fix
  else if (!settle_failure(row, outcome.error()))
    throw error_exception(outcome.error());  // counted as not settled by run_due
}

bool scheduler::settle_failure(const scheduled_command& row, const error& why) noexcept {
  try {
    failed_for_now(row, why);
    return true;
  } catch (const std::exception& e) {
    spdlog::error("scheduled {} ({}): recording a failed attempt: {}", row.command, row.id,
                  e.what());
    return false;
  }
}

void scheduler::refused(const scheduled_command& row, const error& why) {
  // Serializable: a manager's refusal handler changes its instance's state, which a batch of the
  // manager (on another process, during a hand-over of the lease) may change too.
  write_scope tx(db_, detail::no_meta, isolation::serializable);
  const auto it = refusals_.find(row.origin);
  if (it == refusals_.end() || !it->second(*tx, row, why)) {
    mark_failed(*tx, row, fmt::format("refused: {}", why.message));
  }
  tx.commit();
}

void scheduler::fail_for_good(const scheduled_command& row, const error& why) {
  spdlog::error("scheduled {} ({}) kept as failed: {}", row.command, row.id, why.describe());
  detail::writing(db_, [&](write_transaction& tx, write_context&) {
    mark_failed(tx, row, why.message);
    return true;
  });
}

void scheduler::mark_failed(write_session& tx, const scheduled_command& row, std::string_view why) {
  const sql_value params[] = {std::string_view(row.id), why};
  tx.exec(
      "update cleave_schedules set state = 'failed', attempts = attempts + 1, last_error = $2 "
      "where id = $1 and state = 'pending'",
      params);
}

void scheduler::failed_for_now(const scheduled_command& row, const error& why) {
  const auto attempts = row.attempts + 1;
  // 100 ms after the first failure, doubling, at most a minute.
  const auto backoff =
      std::min<std::int64_t>(60'000, std::int64_t{100} << std::min<std::int64_t>(attempts - 1, 10));
  spdlog::info("scheduled {} ({}) failed, attempt {}: {}", row.command, row.id, attempts,
               why.message);
  detail::writing(db_, [&](write_transaction& tx, write_context&) {
    const std::string error_text = why.message;
    const sql_value params[] = {std::string_view(row.id), now_() + backoff,
                                std::string_view(error_text),
                                static_cast<std::int64_t>(opts_.max_attempts)};
    tx.exec(
        "update cleave_schedules set attempts = attempts + 1, due_ms = $2, last_error = $3, "
        "state = case when attempts + 1 >= $4 then 'failed' else 'pending' end "
        "where id = $1 and state = 'pending'",
        params);
    return true;
  });
}

bool scheduler::retry(std::string_view id) {
  bool done = false;
  detail::writing(db_, [&](write_transaction& tx, write_context&) {
    // A fresh id: the old one's outcome (a refusal) is remembered, and a retry must run it.
    const std::string fresh = fmt::format("{}~{}", id, detail::random_schedule_id().substr(0, 8));
    const sql_value params[] = {id, now_(), std::string_view(fresh)};
    done = tx.exec(
               "update cleave_schedules set id = $3, state = 'pending', attempts = 0, "
               "last_error = null, due_ms = $2 where id = $1 and state = 'failed'",
               params) > 0;
    return true;
  });
  return done;
}

bool scheduler::discard(std::string_view id) {
  bool done = false;
  detail::writing(db_, [&](write_transaction& tx, write_context&) {
    const sql_value params[] = {id};
    done = tx.exec("delete from cleave_schedules where id = $1 and state = 'failed'", params) > 0;
    return true;
  });
  return done;
}

std::vector<scheduled_command> scheduler::list(std::size_t limit) {
  return detail::reading(db_, [&](read_context& ctx) {
    return ctx.many<scheduled_command>(
        fmt::format("select {} from cleave_schedules order by state desc, due_ms, id limit $1",
                    columns),
        static_cast<std::int64_t>(limit));
  });
}

scheduler::counts scheduler::count() {
  return detail::reading(db_, [&](read_context& ctx) {
    counts out;
    for (const auto& r :
         ctx.many<state_count>("select state, count(*) as n from cleave_schedules group by state"))
      (r.state == "failed" ? out.failed : out.pending) += r.n;
    return out;
  });
}

json schedules_json(scheduler& s, std::size_t limit) {
  json out = json::array();
  for (const auto& row : s.list(limit)) {
    json item = to_json(row);
    if (auto payload = parse_json(row.payload)) item["payload"] = std::move(*payload);
    if (auto roles = parse_json(row.roles)) item["roles"] = std::move(*roles);
    out.push_back(std::move(item));
  }
  return out;
}

}  // namespace cleave
