// A session: one pooled connection in a write or a read-only transaction. Appends events (the
// stream version checked), remembers a command's outcome for its retries (purging expired ones
// now and then), and commits, returning the position token with the commit's LSN.

#include <algorithm>
#include <cctype>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include <cleave/store/detail/append.hpp>
#include <cleave/store/detail/failure.hpp>

#include "store_impl.hpp"

namespace cleave::postgres {

namespace {

using detail::connection;
using detail::parse_lsn;
using detail::parse_u64;
using detail::result_set;

// The class (first key) of the advisory locks taken on streams: "clv" in ASCII, apart from the
// single-key locks of migrations and leases.
constexpr std::int32_t stream_lock_class = 0x636c76;

// The second key of a stream's advisory lock: the same for every process (FNV-1a of its name).
// Two streams that share one only take turns more than they need.
std::int32_t stream_lock_key(std::string_view stream) {
  std::uint32_t h = 2166136261u;
  for (const unsigned char c : stream) h = (h ^ c) * 16777619u;
  return static_cast<std::int32_t>(h);
}

// Whether `sql` begins with `words` (letters compared without case, after leading blanks).
bool starts_with_words(std::string_view sql, std::string_view words) {
  const auto start = sql.find_first_not_of(" \t\r\n");
  if (start == std::string_view::npos || sql.size() - start < words.size()) return false;
  for (std::size_t i = 0; i < words.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(sql[start + i])) != words[i]) return false;
  return true;
}

// The name a SAVEPOINT, RELEASE or ROLLBACK TO statement names: its last word, in lower case
// unless quoted.
std::string savepoint_name(std::string_view sql) {
  const auto end = sql.find_last_not_of(" \t\r\n;");
  if (end == std::string_view::npos) return {};
  const auto start = sql.find_last_of(" \t\r\n", end);
  std::string name(sql.substr(start == std::string_view::npos ? 0 : start + 1,
                              end - (start == std::string_view::npos ? 0 : start + 1) + 1));
  if (!name.starts_with('"'))
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

// Whether JSON text holds the escape \u0000 (a backslash that is not itself escaped).
bool holds_nul(std::string_view json_text) {
  for (auto at = json_text.find("u0000"); at != std::string_view::npos;
       at = json_text.find("u0000", at + 1)) {
    std::size_t backslashes = 0;
    while (backslashes < at && json_text[at - 1 - backslashes] == '\\') ++backslashes;
    if (backslashes % 2 == 1) return true;
  }
  return false;
}

std::string retention_interval(std::chrono::seconds s) {
  return fmt::format("{} seconds", s.count());
}

}  // namespace

// The version an append gets is computed by the insert itself (cleave_next_version), which
// checks the version before it when the caller was told one or expected one: nothing is read
// first, unless the caller wants the version and this transaction does not know it yet.
std::uint64_t store::impl::session::append(const pending_event& e) {
  std::uint64_t version = 0;
  std::optional<std::int64_t> check;
  if (!e.stream.empty()) {
    auto known = std::find_if(stream_versions.begin(), stream_versions.end(),
                              [&](const auto& v) { return v.first == e.stream; });
    if (known == stream_versions.end())
      known = stream_versions.insert(stream_versions.end(), {std::string(e.stream), std::nullopt});
    const bool pending = !known->second && std::any_of(unsent.begin(), unsent.end(), [&](auto& u) {
      return u.stream == e.stream;
    });
    if (!known->second && !e.expected_version && e.version_wanted) {
      if (pending) send_appends();  // (queued ahead of the read, which then counts them)
      const sql_value stream[] = {e.stream};
      known->second = static_cast<std::uint64_t>(
          conn->run(cleave::detail::stream_version_sql, stream).integer(0, 0));
    }
    if (known->second) {
      version = cleave::detail::next_stream_version(e.stream, *known->second, e.expected_version);
      check = static_cast<std::int64_t>(version - 1);
      known->second = version;
    } else if (e.expected_version) {
      version = *e.expected_version + 1;
      check = static_cast<std::int64_t>(*e.expected_version);
      known->second = version;
    }
  }
  std::string payload = e.payload.dump();
  // Refused now, as the database would refuse it when it is sent.
  if (e.stream.find('\0') != std::string_view::npos || holds_nul(payload))
    cleave::detail::throw_db_failure(cleave::detail::db_failure::nul_character,
                                     "an appended event's stream or payload holds U+0000",
                                     correlation_id);
  unsent.push_back({std::string(e.stream), std::string(e.type), std::move(payload), command_id,
                    correlation_id, check});
  return version;
}

// Two transactions appending to the same streams in opposite orders would each hold the index
// entry of one stream's next version while waiting for the other's: a deadlock. So the events
// are queued together, once the handler is done, and a transaction appending to several streams
// first takes a lock per stream (a transaction-scoped advisory lock, released at its end) in one
// order for everybody: the one that gets the first lock appends to all of them before the other
// can. The events keep the order the handler appended them in. Queued, they travel with the
// statement that next waits for an answer — at the latest COMMIT.
void store::impl::session::send_appends() {
  if (unsent.empty()) return;
  std::vector<std::int32_t> locks;
  for (const auto& u : unsent)
    if (!u.stream.empty()) locks.push_back(stream_lock_key(u.stream));
  std::sort(locks.begin(), locks.end());
  locks.erase(std::unique(locks.begin(), locks.end()), locks.end());
  if (locks.size() > 1)  // (one stream alone waits for one other transaction at most)
    for (const auto key : locks)
      conn->defer_plain(
          fmt::format("select pg_advisory_xact_lock({}, {})", stream_lock_class, key));
  const auto sending = std::exchange(unsent, {});
  for (const auto& u : sending) {
    const sql_value params[] = {std::string_view(u.stream),
                                u.check ? sql_value{*u.check} : sql_value{},
                                std::string_view(u.type),
                                std::string_view(u.payload),
                                cleave::detail::text_or_null(u.command_id),
                                cleave::detail::text_or_null(u.correlation_id)};
    inserts.push_back(conn->defer(
        "insert into cleave_events(stream, stream_version, type, payload, command_id, "
        "correlation_id) values ($1, cleave_next_version($1, $2), $3, $4::jsonb, $5, $6) "
        "returning position, transaction_id::text",
        params, /*keep=*/true));
    appended = true;
  }
}

void store::impl::session::read_inserts(std::uint64_t before) {
  const auto later = std::find_if(inserts.begin(), inserts.end(),
                                  [&](std::uint64_t ticket) { return ticket >= before; });
  for (auto it = inserts.begin(); it != later; ++it) {
    auto r = conn->take(*it);
    if (!r || r->status() != PGRES_TUPLES_OK || r->rows() == 0) continue;
    const auto position = static_cast<std::uint64_t>(r->integer(0, 0));
    last_position = std::max(last_position, position);
    transaction_id = parse_u64(r->text(0, 1));
    insert_positions.emplace_back(*it, position);
  }
  inserts.erase(inserts.begin(), later);
}

// Group commit's held member: the token of its appends (and those before it), read from the
// answers already in (its caller made sure, by a sync, that they are).
position_token store::impl::session::position_before(std::uint64_t mark) {
  read_inserts(mark);
  std::uint64_t position = 0;
  for (const auto& [ticket, at] : insert_positions)
    if (ticket < mark) position = std::max(position, at);
  return position == 0 ? position_token(0, 0) : position_token(transaction_id, position);
}

// Held appends follow savepoints (group commit puts each member in one): those held are queued
// before a savepoint is taken or released. Rolling back to a savepoint drops those held since,
// and the answers of statements queued since (their failure is why it rolls back), but not those
// before it: an earlier failure is still thrown, and earlier inserts' positions kept. The
// savepoint is the newest of that name taken before the statement that failed: the database
// skipped the statements after a failure, savepoints among them (group commit's members whose
// statements were held behind a failed one's). What this transaction knows of its streams'
// versions is dropped, read again when needed.
void store::impl::session::before_savepoint_statement(std::string_view sql) {
  if (starts_with_words(sql, "savepoint")) {
    send_appends();
    savepoints.push_back({savepoint_name(sql), conn->next_ticket(), appended});
  } else if (starts_with_words(sql, "release")) {
    send_appends();
  } else if (starts_with_words(sql, "rollback to")) {
    unsent.clear();
    stream_versions.clear();
    const auto name = savepoint_name(sql);
    const auto failed = conn->failed_ticket();
    auto to = std::find_if(savepoints.rbegin(), savepoints.rend(), [&](const savepoint_mark& m) {
      return m.name == name && failed && m.ticket < *failed;
    });
    if (to == savepoints.rend())  // (a failure before it is thrown below)
      to = std::find_if(savepoints.rbegin(), savepoints.rend(),
                        [&](const savepoint_mark& m) { return m.name == name; });
    const auto mark = to == savepoints.rend() ? savepoint_mark{} : *to;
    if (to != savepoints.rend()) savepoints.erase(to.base(), savepoints.end());
    conn->sync(mark.ticket);
    std::erase_if(inserts, [&](std::uint64_t t) { return t >= mark.ticket; });
    std::erase_if(insert_positions, [&](const auto& p) { return p.first >= mark.ticket; });
    read_inserts();
    appended = mark.appended;
    // What failed after the savepoint is rolled back with it; a failure before it stands (group
    // commit tells from it whose statement failed).
    if (failed && *failed >= mark.ticket) conn->forget_failure();
  }
}

std::int64_t store::impl::session::exec(std::string_view sql, std::span<const sql_value> params) {
  before_savepoint_statement(sql);
  return conn->run(sql, params).affected();
}

write_session::deferred store::impl::session::defer(std::string_view sql,
                                                    std::span<const sql_value> params) {
  if (starts_with_words(sql, "rollback to")) return {exec(sql, params), 0};
  before_savepoint_statement(sql);
  return {-1, conn->defer(sql, params)};
}

std::optional<remembered_outcome> store::impl::session::remembered() {
  const auto keep = retention_interval(owner->opts.outcome_retention);
  const sql_value key[] = {std::string_view(command_id), std::string_view(keep)};
  auto r = conn->run(
      // The commit's LSN is not known inside its transaction; the primary's WAL position now
      // is past it, so a standby that has replayed that much has the command's effects.
      "select command_type, outcome::text, transaction_id::text, position, "
      "coalesce(lsn, pg_current_wal_lsn())::text "
      "from cleave_commands where command_id = $1 and recorded_at >= now() - $2::interval",
      key);
  if (r.rows() == 0) return std::nullopt;
  auto stored = parse_json(r.text(0, 1));
  auto prior = stored ? outcome_from_json(*stored) : std::unexpected(stored.error());
  if (!prior) throw error_exception(prior.error());
  prior->command_type = r.text(0, 0);
  prior->position =
      position_token(parse_u64(r.text(0, 2)), static_cast<std::uint64_t>(r.integer(0, 3)),
                     r.is_null(0, 4) ? 0 : parse_lsn(r.text(0, 4)));
  return std::move(*prior);
}

// Queued, to travel with COMMIT. A live record of the id (a racing retry won) makes the insert
// fail with a unique violation — a conflict, at the commit; an expired one not yet purged is
// deleted first and gives way. The record's transaction and position are the database's own:
// this transaction's id and the last position it appended, when it appended.
void store::impl::session::remember(const remembered_outcome& outcome) {
  send_appends();  // the outcome records their position
  const std::string text = outcome_to_json(outcome).dump();
  const auto keep = retention_interval(owner->opts.outcome_retention);
  const sql_value expired[] = {std::string_view(command_id), std::string_view(keep)};
  conn->defer(
      "delete from cleave_commands where command_id = $1 and recorded_at < now() - $2::interval",
      expired);
  const sql_value row[] = {std::string_view(command_id), std::string_view(outcome.command_type),
                           std::string_view(text), std::int64_t{appended ? 1 : 0}};
  conn->defer(
      "insert into cleave_commands(command_id, command_type, outcome, transaction_id, "
      "position) values ($1, $2, $3::jsonb, "
      "case when $4::int = 1 then pg_current_xact_id() else '0'::xid8 end, "
      "case when $4::int = 1 then currval(pg_get_serial_sequence('cleave_events', 'position')) "
      "else 0 end)",
      row);
  if (owner->outcomes_recorded.fetch_add(1) % cleave::detail::outcome_purge_every ==
      cleave::detail::outcome_purge_every - 1) {
    const sql_value older[] = {std::string_view(keep)};
    conn->defer("delete from cleave_commands where recorded_at < now() - $1::interval", older);
  }
}

void store::impl::session::rebind(const request_meta& meta) {
  // (Under group commit each member's own deadline guards its statements; the server-side
  // timeouts stay those the group's transaction began with.)
  deadline = meta.deadline;
  conn->guard_until(grace_after(meta.deadline));
  command_id.assign(meta.command_id);
  correlation_id.assign(meta.correlation_id);
  conn->set_correlation_id(meta.correlation_id);
}

// One round trip: what is still queued (BEGIN when nothing was sent yet, the handler's queued
// statements, the appends, the outcome's record), the transaction's id (when it has one: it
// wrote), COMMIT, and the WAL position after it, each answer read on its own. COMMIT answered is
// the outcome. When the connection breaks before COMMIT's answer, the transaction id says where
// to ask what became of it; without one the transaction wrote nothing and committing it or not
// is the same.
position_token store::impl::session::commit() {
  // Past the deadline nothing is sent: the answer is a definite timeout, not an unknown commit.
  if (conn->out_of_time()) {
    rollback();
    cleave::detail::throw_deadline_passed("before the command committed");
  }
  std::exception_ptr failure;
  std::optional<result_set> id_answer, commit_answer, lsn_answer;
  try {
    send_appends();
    const auto id_ticket =
        conn->defer_plain("select pg_current_xact_id_if_assigned()::text", /*keep=*/true);
    const auto commit_ticket = conn->defer_plain("commit", /*keep=*/true);
    const auto lsn_ticket = conn->defer_plain("select pg_current_wal_lsn()::text", /*keep=*/true);
    try {
      conn->sync();
    } catch (...) {
      failure = std::current_exception();  // the first statement that failed, or the connection
    }
    read_inserts();
    const auto keep = [&](std::optional<result_set>& into, std::uint64_t ticket) {
      if (auto a = conn->take(ticket)) into.emplace(std::move(*a));
    };
    keep(id_answer, id_ticket);
    keep(commit_answer, commit_ticket);
    keep(lsn_answer, lsn_ticket);
  } catch (...) {
    rollback();  // gives the session back: after the error is made
    throw;
  }
  const auto answered = [](const std::optional<result_set>& a) {
    return a && a->status() == PGRES_TUPLES_OK && a->rows() == 1;
  };
  std::optional<std::uint64_t> xid;
  if (answered(id_answer)) xid = id_answer->is_null(0, 0) ? 0 : parse_u64(id_answer->text(0, 0));
  if (transaction_id != 0) xid = transaction_id;
  const std::uint64_t lsn = answered(lsn_answer) ? parse_lsn(lsn_answer->text(0, 0)) : 0;
  const bool committed = commit_answer && commit_answer->status() == PGRES_COMMAND_OK &&
                         commit_answer->command_tag() == "COMMIT";
  if (!committed && conn->healthy()) {
    // A definite refusal (a statement's failure, a serialization failure at commit, a deferred
    // constraint): the transaction is rolled back; its error says why.
    rollback();  // gives the session back: after the error is made
    if (failure) std::rethrow_exception(failure);
    throw error_exception({errc::internal, "the transaction was rolled back at its commit", {}});
  }
  // The server refused BEGIN itself (it was shutting the connection down): nothing ran.
  bool never_began = false;
  if (!committed) {
    auto begun = conn->take(begin_ticket);
    never_began = begun && begun->status() != PGRES_COMMAND_OK;
  }
  const bool wrote_events = appended;
  // What is needed after the session is given back (another request may take it at once).
  const position_token so_far(transaction_id, last_position, lsn);
  impl& pool = *owner;
  const auto until = deadline;
  pool.give_back(this);  // a broken connection is replaced
  if (!committed) {
    if (never_began && failure) std::rethrow_exception(failure);  // (unavailable: try again)
    if (xid == 0u) return position_token(0, 0, 0);                // it wrote nothing
    if (!xid)
      throw error_exception({errc::outcome_unknown,
                             "the connection to the database was lost while the command "
                             "committed, and whether it did is unknown: retry it with the same "
                             "command id",
                             {}});
    pool.resolve_commit(*xid, until);
  }
  if (wrote_events) pool.announce_commit();
  return so_far;
}

void store::impl::resolve_commit(std::uint64_t xid, clock::time_point deadline) {
  // A few seconds at least (the server may be restarting), and not for ever.
  const auto now = clock::now();
  const auto until =
      std::clamp(deadline, now + std::chrono::seconds(2), now + std::chrono::seconds(10));
  const std::string id = std::to_string(xid);
  auto pause = std::chrono::milliseconds(20);
  for (;;) {
    std::string status;  // "in progress" until the server has ended the broken connection's
    try {
      connection asking(opts.url);
      asking.guard_until(until);  // (one connection per question: a fresh one each time)
      const sql_value param[] = {std::string_view(id)};
      auto r = asking.run("select coalesce(pg_xact_status($1::xid8), 'unknown')", param);
      status = r.text(0, 0);
    } catch (const error_exception& e) {
      // Not reachable yet (restarting): ask again.
      if (e.error().category != errc::unavailable && e.error().category != errc::timeout) throw;
    }
    if (status == "committed") return;
    if (status == "aborted")
      throw error_exception({errc::unavailable,
                             "the connection to the database was lost before the command "
                             "committed, and it did not: try again",
                             {}});
    if (clock::now() + pause >= until) break;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(500));
  }
  throw error_exception({errc::outcome_unknown,
                         "the connection to the database was lost while the command committed, "
                         "and whether it did could not be learned in time: retry it with the "
                         "same command id",
                         {}});
}

void store::impl::session::rollback() noexcept {
  try {
    // Past the deadline too: a rollback that is answered keeps the connection.
    if (conn->healthy()) conn->guard_until(clock::now() + std::chrono::seconds(1));
    // Sent with what is queued (their failure may be why it rolls back, and then it is skipped,
    // and sent again on its own).
    std::optional<result_set> rolled_back;
    if (conn->pipelining()) {
      try {
        const auto ticket = conn->defer_plain("rollback", /*keep=*/true);
        conn->discard_queued();
        if (auto a = conn->take(ticket)) rolled_back.emplace(std::move(*a));
      } catch (...) {
        // (What was queued failed before ROLLBACK was: it is sent on its own below.)
      }
    }
    if (conn->healthy() && (!rolled_back || rolled_back->status() != PGRES_COMMAND_OK))
      conn->script("rollback");
  } catch (...) {
    // A broken connection is replaced when given back.
  }
  owner->give_back(this);
}

}  // namespace cleave::postgres
