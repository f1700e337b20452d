#include <cleave/core/bus.hpp>
#include <cleave/core/detail/fibers.hpp>
#include <cleave/core/detail/schedules.hpp>

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace cleave {

namespace detail {

namespace {

// Refusals a retry would only repeat, so an idempotent command remembers them; transient
// failures (conflict, unavailable, internal) are not remembered and a retry runs again.
bool remembered_failure(errc category) {
  return category == errc::rejected || category == errc::validation || category == errc::not_found;
}

// The command's type and payload as 16 hex digits: FNV-1a (64 bits) over the wire name and the
// canonical JSON (members sorted). It tells a retry from a reuse of the id by mistake, within one
// principal's keys, so it need not resist forgery (which would bring a crypto library into core).
std::string fingerprint(const message_info& info, const command_step& step) {
  std::uint64_t h = 14695981039346656037ull;
  auto mix = [&](std::string_view bytes) {
    for (const char c : bytes) {
      h ^= static_cast<unsigned char>(c);
      h *= 1099511628211ull;
    }
  };
  mix(info.wire_name);
  mix(std::string_view("\0", 1));
  mix(step.message().dump());
  return fmt::format("{:016x}", h);
}

// The record of a command's first outcome under its id.
remembered_outcome first_outcome(const message_info& info, const request_meta& meta,
                                 const command_step& step, std::optional<error> failure) {
  json response = failure ? json(nullptr) : step.response();
  return {std::string(info.wire_name), std::move(failure), std::move(response), {},
          fingerprint(info, step),     meta.correlation_id};
}

// Replays an outcome recorded for the command's id, unless the id was recorded for another
// command type or payload.
result<void> replay(const remembered_outcome& prior, const message_info& info,
                    const request_meta& meta, written& out, const command_step& step) {
  // The key is the caller's own: naming it (not the other payload) tells them which one.
  if (prior.command_type != info.wire_name)
    return fail(errc::idempotency_key_reused,
                fmt::format("the idempotency key '{}' was already used for '{}'", meta.command_id,
                            prior.command_type));
  if (!prior.fingerprint.empty() && prior.fingerprint != fingerprint(info, step))
    return fail(errc::idempotency_key_reused,
                fmt::format("the idempotency key '{}' was already used for '{}' with another "
                            "payload",
                            meta.command_id, prior.command_type));
  out.position = prior.position;
  out.replay_of = prior.correlation_id;
  if (prior.failure) return std::unexpected(*prior.failure);
  return step.replay(prior.response);
}

// Looks the command id up in a transaction of its own (through write(): under group commit, a
// member of a group like any command, so that a fiber waits suspended rather than for the lane).
std::optional<remembered_outcome> look_up(session_source& source, const request_meta& meta) {
  std::optional<remembered_outcome> found;
  source.write(meta, isolation::serializable, [&](write_transaction& tx) {
    found = tx.remembered();
    return true;
  });
  return found;
}

// How a transaction the database gave up runs again: at most max_attempts in all, after jittered
// pauses doubling from 1–2 ms up to 32–64 ms. Measured: on a fresh PostgreSQL table 16 writers
// lost ~1.4% of commands after 5 attempts (page-level predicate locks collide while indexes are
// small); none after 10.
constexpr int max_attempts = 10;
class retry_pauses {
 public:
  // The next pause, in [base, 2 × base): retries of commands that collided spread apart.
  std::chrono::microseconds next() {
    thread_local std::minstd_rand random{std::random_device{}()};
    const auto wait =
        base_ + std::chrono::microseconds(random() % static_cast<std::uint64_t>(base_.count()));
    base_ = std::min(base_ * 2, std::chrono::microseconds(32'000));
    return wait;
  }

 private:
  std::chrono::microseconds base_{1000};
};

// Records a refusal under the command's id, in a transaction of its own, running it again (a few
// times) when the database gives it up or a racing retry's record collides with it. Returns the
// outcome a racing retry recorded first, if one did: the caller answers with that, so that every
// answer under the id is the recorded one. Best effort: when recording fails otherwise, the
// caller still gets its refusal, and a retry runs the command again.
std::optional<remembered_outcome> remember_failure(session_source& source, const message_info& info,
                                                   const request_meta& meta,
                                                   const command_step& step,
                                                   const error& failure) noexcept {
  retry_pauses pauses;
  for (int attempt = 1;; ++attempt) {
    try {
      // (Committed either way: under group commit the record read may be a member's of this very
      // group, and the commit waits until it is durable.)
      std::optional<remembered_outcome> prior;
      source.write(meta, isolation::serializable, [&](write_transaction& tx) {
        prior = tx.remembered();
        if (!prior) tx.remember(first_outcome(info, meta, step, failure));
        return true;
      });
      return prior;
    } catch (const error_exception& e) {
      if (e.error().category != errc::conflict || attempt >= max_attempts) {
        spdlog::warn(
            "the refusal of command {} could not be remembered after {} attempt(s) "
            "[correlation {}]: {} ({}); a retry under its id runs it again",
            info.wire_name, attempt, meta.correlation_id, e.error().message,
            to_string(e.error().category));
        return std::nullopt;
      }
    } catch (...) {
      (void)error_from_current_exception(info, meta);
      return std::nullopt;
    }
    detail::pause(pauses.next());  // (outside the catch block: a fiber may be suspended here)
  }
}

// One attempt of run_write; a transient failure leaves it as an exception, to run it again.
result<void> write_once(session_source* source, const message_info& info, const request_meta& meta,
                        written& out, const command_step& step) {
  if (!source) {
    try {
      write_context ctx(nullptr, meta);
      return step.run(ctx);
    } catch (...) {
      return std::unexpected(error_from_current_exception(info, meta));
    }
  }
  const bool idempotent = !meta.command_id.empty();
  // What the transaction found, for after it ended.
  std::optional<remembered_outcome> prior;  // the outcome recorded earlier under the command id
  std::optional<result<void>> refused;      // why it was rolled back
  bool handler_refused = false;             // (a refusal a retry would only repeat is remembered)
  bool ran = false;  // the handler succeeded: a conflict from now on may be a lost race
  const auto work = [&](write_transaction& tx) {
    // (Group commit may run it again, when what failed was another member's.)
    prior.reset();
    refused.reset();
    handler_refused = ran = false;
    if (idempotent) prior = tx.remembered();
    if (prior) {
      // A scheduled command that already ran (its first send's transaction took the schedule;
      // this takes one left behind, so that it is not due for ever). A remembered refusal
      // leaves it to the scheduler, which hands refusals on.
      if (!meta.schedule_id.empty() && !prior->failure) claim_schedule(tx, meta.schedule_id);
      // Committed, not rolled back, though it changed nothing: under group commit the outcome
      // read may be a member's of this very group, and the commit waits for the group (throwing
      // transient_error, to run again, when the group is given up) where a rollback would not.
      return true;
    }
    if (!meta.schedule_id.empty() && !claim_schedule(tx, meta.schedule_id)) {
      refused = fail(errc::not_found, "the scheduled command was cancelled or replaced");
      return false;
    }
    write_context ctx(&tx, meta);
    auto outcome = step.run(ctx);
    if (!outcome) {
      refused = std::move(outcome);
      handler_refused = true;
      return false;
    }
    ran = true;
    if (idempotent) tx.remember(first_outcome(info, meta, step, std::nullopt));
    return true;
  };
  std::exception_ptr conflict;  // a lost race of two retries (below)
  try {
    auto position = source->write(meta, step.level, work);
    if (prior) return replay(*prior, info, meta, out, step);
    if (refused) {
      if (idempotent && handler_refused && remembered_failure(refused->error().category))
        if (auto first = remember_failure(*source, info, meta, step, refused->error()))
          return replay(*first, info, meta, out, step);
      return std::move(*refused);
    }
    out.position = position;
    return {};
  } catch (const transient_error&) {
    throw;  // run again: a retry finds a racing winner's outcome first
  } catch (const error_exception& e) {
    if (!ran || !idempotent || e.error().category != errc::conflict)
      return std::unexpected(error_from_current_exception(info, meta));
    conflict = std::current_exception();
  } catch (...) {
    return std::unexpected(error_from_current_exception(info, meta));
  }
  // Two retries raced (possible where writers run concurrently): the loser's record of the id
  // collided — when it was made, or at the commit where the backend sent it with the COMMIT;
  // its effects were rolled back and it returns the winner's outcome. (Looked up outside the
  // catch block: the wait for a transaction may suspend a fiber, which a catch block may not.)
  try {
    if (auto winner = look_up(*source, meta)) return replay(*winner, info, meta, out, step);
  } catch (...) {
    // the conflict stands
  }
  try {
    std::rethrow_exception(conflict);
  } catch (...) {
    return std::unexpected(error_from_current_exception(info, meta));
  }
}

// errc::timeout when the request's deadline has passed: it does not begin a transaction then, on
// any backend.
std::optional<error> past_deadline(const request_meta& meta) {
  if (meta.deadline == clock::time_point::max() || clock::now() < meta.deadline)
    return std::nullopt;
  return error{errc::timeout, "the request's deadline passed before it reached the database", {}};
}

}  // namespace

result<void> run_write(session_source* source, const message_info& info, const request_meta& meta,
                       written& out, const command_step& step) {
  retry_pauses pauses;
  if (auto late = past_deadline(meta)) return std::unexpected(std::move(*late));
  for (int attempt = 1;; ++attempt) {
    error collided;
    try {
      return write_once(source, info, meta, out, step);
    } catch (const transient_error& e) {
      collided = e.error();
    }
    const auto wait = pauses.next();
    const bool out_of_time = clock::now() + wait >= meta.deadline;
    if (attempt >= max_attempts || out_of_time) {
      spdlog::info("command {} gave up after {} attempt(s) [correlation {}]: {}", info.wire_name,
                   attempt, meta.correlation_id, collided.message);
      // Out of time, the collision is why it did not finish: a timeout, retryable as one.
      if (out_of_time && attempt < max_attempts)
        return std::unexpected(error{
            errc::timeout,
            fmt::format("the request's deadline passed while it retried: {}", collided.message),
            {}});
      return std::unexpected(std::move(collided));
    }
    detail::pause(wait);  // (a fiber waits suspended)
  }
}

result<void> run_read(session_source* source, const message_info& info, const request_meta& meta,
                      function_ref<result<void>(read_context&)> body,
                      const answer_position_fn* position, position_token* at) {
  if (auto late = past_deadline(meta)) return std::unexpected(std::move(*late));
  try {
    if (!source) {
      read_context ctx(nullptr, meta);
      return body(ctx);
    }
    read_scope tx(*source, meta, meta.consistency);
    read_context ctx(&*tx, meta);
    auto answered = body(ctx);
    if (answered && position && at) {
      try {
        *at = (*position)(info.wire_name, *tx);
      } catch (const std::exception&) {
        // The answer stands without it (the position is a hint for the next read).
      }
    }
    return answered;
  } catch (...) {
    return std::unexpected(error_from_current_exception(info, meta));
  }
}

template <class Bus>
result<json_outcome> dispatch_by_name(const bus_core& core, Bus* bus, message_kind kind,
                                      std::string_view wire_name, const json& body,
                                      const request_meta& meta,
                                      std::optional<std::string>* replay_of) {
  const auto* e = core.find(wire_name);
  if (!e) return fail(errc::not_found, fmt::format("unknown {} '{}'", to_string(kind), wire_name));
  return e->invoke_json(bus, body, meta, replay_of);
}

}  // namespace detail

result<json_outcome> command_bus::send_json(std::string_view wire_name, const json& body,
                                            const request_meta& meta,
                                            std::optional<std::string>* replay_of) {
  return detail::dispatch_by_name(core_, this, message_kind::command, wire_name, body, meta,
                                  replay_of);
}

result<json_outcome> query_bus::ask_json(std::string_view wire_name, const json& body,
                                         const request_meta& meta) {
  return detail::dispatch_by_name(core_, this, message_kind::query, wire_name, body, meta, nullptr);
}

result<std::string> command_id_for(const principal& who, std::string_view key) {
  constexpr std::size_t max_key = 255;
  bool visible = !key.empty() && key.size() <= max_key;
  for (const char c : key) visible = visible && c >= '!' && c <= '~';
  if (!visible)
    return fail(errc::validation,
                fmt::format("an idempotency key is 1 to {} visible ASCII characters", max_key));
  // A key has no space, so the last space splits a scoped id unambiguously and an anonymous key
  // never equals one.
  if (who.subject.empty()) return std::string(key);
  return fmt::format("{} {}", who.subject, key);
}

json outcome_to_json(const remembered_outcome& outcome) {
  json out{{"fingerprint", outcome.fingerprint}, {"correlation_id", outcome.correlation_id}};
  if (!outcome.failure) {
    out["response"] = outcome.response;
    return out;
  }
  json fields = json::array();
  for (const auto& f : outcome.failure->fields)
    fields.push_back({{"path", f.path}, {"message", f.message}});
  out["error"] = {{"category", to_string(outcome.failure->category)},
                  {"message", outcome.failure->message},
                  {"fields", std::move(fields)}};
  return out;
}

result<remembered_outcome> outcome_from_json(const json& stored) {
  remembered_outcome out;
  try {
    out.fingerprint = stored.value("fingerprint", "");
    out.correlation_id = stored.value("correlation_id", "");
    if (auto it = stored.find("response"); it != stored.end()) {
      out.response = *it;
      return out;
    }
    const auto& e = stored.at("error");
    auto category = errc_from_string(e.at("category").get<std::string>());
    if (!category) return fail(errc::internal, "a remembered outcome has an unknown category");
    error failure{*category, e.at("message").get<std::string>(), {}};
    for (const auto& f : e.at("fields"))
      failure.fields.push_back(
          {f.at("path").get<std::string>(), f.at("message").get<std::string>()});
    out.failure = std::move(failure);
    return out;
  } catch (const json::exception& ex) {
    return fail(errc::internal, fmt::format("a remembered outcome is malformed: {}", ex.what()));
  }
}

}  // namespace cleave
