#pragma once
// The scheduler sends scheduled commands once they are due (write_context::schedule, process
// managers' sends and schedules). It runs as a leader task of the projector: one process among
// those sharing a database sends, and a schedule that came due while none ran is sent when one
// comes back — late, never lost.
//
// Exactly once in effect: a command is sent with its schedule's id as its command id (marked:
// command_id_of), and its own transaction takes the schedule out of the table before its handler
// runs (request_meta::schedule_id). A crash between the send and anything after it resends the same
// id, which the command bus answers with the first outcome; a schedule cancelled first is never
// run.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/core/bus.hpp>
#include <cleave/core/detail/schedules.hpp>
#include <cleave/store/store.hpp>

namespace cleave {

// One row of the schedule table, as the scheduler and the listings see it.
struct scheduled_command {
  std::string id;  // what its command id is made of (scheduler::command_id_of)
  std::string key;
  std::string command;  // wire name
  std::string payload;  // JSON
  std::string origin;   // the process manager that made it; empty for a command handler
  std::string instance;
  std::string subject;  // who it runs as
  std::string roles;    // JSON array
  std::string state;    // "pending" or "failed"
  std::int64_t due_ms = 0;
  std::int64_t attempts = 0;
  std::optional<std::string> last_error;
};
CLEAVE_RECORD(scheduled_command, id, key, command, payload, origin, instance, subject, roles, state,
              due_ms, attempts, last_error)

struct scheduler_options {
  std::size_t batch = 256;  // due schedules read at a time
  // The deadline each send gets.
  std::chrono::milliseconds request_timeout{5000};
  // A send that fails for a passing reason (timeout, conflict, an unavailable database, a bug in
  // its handler) is tried again later, waiting twice as long each time (from 100 ms, at most a
  // minute); after this many attempts it is kept as failed.
  int max_attempts = 10;
};

class scheduler {
 public:
  // Sends one command by wire name (the application's command bus).
  using send_fn = std::function<result<json_outcome>(std::string_view wire_name,
                                                     const json& payload, const request_meta&)>;
  // Takes a refusal of a command that process manager `origin` sent, in `tx`: true when it was
  // handled (its schedule is then gone), false to keep the schedule as failed.
  using refusal_fn =
      std::function<bool(write_session& tx, const scheduled_command& refused, const error& why)>;
  // The time now, in Unix milliseconds. Another clock than the system's (a test's, which may
  // stand still or jump) is for a caller that runs run_due() itself: the projector's worker
  // sleeps until the time run_due() returns by the system clock.
  using clock_fn = std::function<std::int64_t()>;

  // `db` is not owned and must outlive the scheduler.
  scheduler(store& db, send_fn send, scheduler_options opts = {},
            clock_fn now = cleave::detail::unix_now_ms);

  // Registers how process manager `origin` takes refusals of what it sent.
  void on_refused(std::string origin, refusal_fn handle);
  // Who the commands process manager `origin` made run as (its roles now, also for schedules it
  // made before they changed).
  void runs_as(std::string origin, principal who);

  // Sends every schedule due now, in due order; returns when the next one is due (nullopt: none
  // pending). The projector's leader task. Outcomes: sent (the command's transaction took the
  // schedule); refused by the command's rule (rejected, validation, not_found) — handed to the
  // process manager that sent it (on_rejected), else kept as failed; refused for want of a role
  // or for an id already used — kept as failed and logged as an error (a setup to fix); anything
  // else — tried again later (scheduler_options::max_attempts).
  std::optional<std::int64_t> run_due();
  // Puts a failed schedule back, due now, under a fresh id (so that a remembered refusal is not
  // just replayed); false when `id` names no failed schedule.
  bool retry(std::string_view id);
  // Deletes a failed schedule; false when `id` names no failed schedule.
  bool discard(std::string_view id);
  // The command id a schedule is sent with: its id, marked so that no caller's idempotency key
  // can be it ("@schedule <id>").
  static std::string command_id_of(std::string_view schedule_id);
  // Schedules pending and failed, soonest first (at most `limit`).
  std::vector<scheduled_command> list(std::size_t limit = 200);
  // How many are pending, and how many failed.
  struct counts {
    std::int64_t pending = 0;
    std::int64_t failed = 0;
  };
  counts count();

 private:
  void send_one(const scheduled_command& row);
  void refused(const scheduled_command& row, const error& why);
  void fail_for_good(const scheduled_command& row, const error& why);
  static void mark_failed(write_session& tx, const scheduled_command& row, std::string_view why);
  void failed_for_now(const scheduled_command& row, const error& why);
  // failed_for_now(), logging what goes wrong on the way instead of throwing; false then.
  bool settle_failure(const scheduled_command& row, const error& why) noexcept;

  store& db_;
  send_fn send_;
  scheduler_options opts_;
  clock_fn now_;
  std::map<std::string, refusal_fn, std::less<>> refusals_;
  std::map<std::string, principal, std::less<>> runs_as_;
};

// The schedules as JSON (the `schedule list` verb, the HTTP admin API).
json schedules_json(scheduler& s, std::size_t limit = 200);

}  // namespace cleave
