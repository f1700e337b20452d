// The scheduler: sends what is due through the command bus, and settles each outcome — a sent
// command took its schedule with it; a refusal goes to the process manager that sent it (or stays
// as failed); a passing failure is tried again later.

#include <cleave/workflow/scheduler.hpp>

#include <algorithm>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace cleave {

namespace {

constexpr std::string_view columns =
    "id, key, command, payload, origin, instance, subject, roles, state, due_ms, attempts, "
    "last_error";

// Refusals that sending again would only repeat.
bool is_refusal(errc category) {
  switch (category) {
    case errc::validation:
    case errc::not_found:
    case errc::rejected:
    case errc::unauthorized:
    case errc::forbidden:
    case errc::idempotency_key_reused:
      return true;
    default:
      return false;
  }
}

struct state_count {
  std::string state;
  std::int64_t n = 0;
};
CLEAVE_RECORD(state_count, state, n)

template <class F>
auto read_primary(store& db, F&& body) {
  read_scope tx(db, detail::no_meta, strong());
  read_context ctx(&*tx, detail::no_meta);
  return body(ctx);
}

template <class F>
void write_now(store& db, F&& body) {
  write_scope tx(db, detail::no_meta, isolation::read_committed);
  if (body(*tx)) tx.commit();
}

}  // namespace

scheduler::scheduler(store& db, send_fn send, scheduler_options opts, clock_fn now)
    : db_(db), send_(std::move(send)), opts_(opts), now_(std::move(now)) {}

void scheduler::on_refused(std::string origin, refusal_fn handle) {
  refusals_[std::move(origin)] = std::move(handle);
}

std::optional<std::int64_t> scheduler::run_due() {
  const auto now = now_();
  const auto due = read_primary(db_, [&](read_context& ctx) {
    return ctx.many<scheduled_command>(
        fmt::format("select {} from cleave_schedules where state = 'pending' and due_ms <= $1 "
                    "order by due_ms, id limit $2",
                    columns),
        now, static_cast<std::int64_t>(opts_.batch));
  });
  for (const auto& row : due) {
    request_meta meta;
    meta.command_id = row.id;
    meta.schedule_id = row.id;
    meta.correlation_id = "schedule:" + row.id;
    meta.principal.subject = row.subject;
    if (auto roles = parse_json(row.roles); roles && roles->is_array())
      for (const auto& r : *roles)
        if (r.is_string()) meta.principal.roles.push_back(r.get<std::string>());
    meta.deadline = clock::now() + opts_.request_timeout;
    auto payload = parse_json(row.payload);
    auto outcome = payload ? send_(row.command, *payload, meta)
                           : result<json_outcome>(std::unexpected(payload.error()));
    if (outcome) continue;  // its transaction took the schedule away
    if (is_refusal(outcome.error().category))
      refused(row, outcome.error());
    else
      failed_for_now(row, outcome.error());
  }
  if (due.size() == opts_.batch) return now;  // more are due
  return read_primary(db_, [&](read_context& ctx) -> std::optional<std::int64_t> {
    auto next = ctx.one<std::optional<std::int64_t>>(
        "select min(due_ms) from cleave_schedules where state = 'pending'");
    return next ? *next : std::nullopt;
  });
}

void scheduler::refused(const scheduled_command& row, const error& why) {
  write_now(db_, [&](write_session& tx) {
    if (auto it = refusals_.find(row.origin); it != refusals_.end() && it->second(tx, row, why))
      return true;
    const sql_value params[] = {std::string_view(row.id),
                                std::string_view(fmt::format("refused: {}", why.message))};
    tx.exec(
        "update cleave_schedules set state = 'failed', attempts = attempts + 1, last_error = $2 "
        "where id = $1 and state = 'pending'",
        params);
    return true;
  });
}

void scheduler::failed_for_now(const scheduled_command& row, const error& why) {
  const auto attempts = row.attempts + 1;
  const auto backoff = std::min<std::int64_t>(60'000, 100LL << std::min<std::int64_t>(attempts, 10));
  spdlog::info("scheduled {} ({}) failed, attempt {}: {}", row.command, row.id, attempts,
               why.message);
  write_now(db_, [&](write_session& tx) {
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

std::vector<scheduled_command> scheduler::list(std::size_t limit) {
  return read_primary(db_, [&](read_context& ctx) {
    return ctx.many<scheduled_command>(
        fmt::format("select {} from cleave_schedules order by state desc, due_ms, id limit $1",
                    columns),
        static_cast<std::int64_t>(limit));
  });
}

scheduler::counts scheduler::count() {
  return read_primary(db_, [&](read_context& ctx) {
    counts out;
    for (const auto& r : ctx.many<state_count>(
             "select state, count(*) as n from cleave_schedules group by state"))
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
