// The verbs every cleave application offers (see verbs.hpp): one function each, its arguments
// parsed with CLI11. Results go to stdout (JSON), errors to stderr; exit codes: 0 done, 2 the
// caller's mistake (usage, validation, not found), 1 anything else.

#include "verbs.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

namespace cleave::verbs {

namespace {

void print_json(const json& j) {
  std::cout << j.dump(2) << std::endl;
}

// A progress bar on stderr, redrawn in place.
void draw_progress(const rebuild_progress& p) {
  const double done = p.total == 0 ? 1.0 : std::min(1.0, double(p.applied) / double(p.total));
  const int width = 30, filled = static_cast<int>(done * width);
  std::cerr << '\r' << '[' << std::string(static_cast<std::size_t>(filled), '#')
            << std::string(static_cast<std::size_t>(width - filled), '.') << "] "
            << fmt::format("{:5.1f}% {}/{} events", done * 100, p.applied, p.total)
            << (p.swapped ? " swapped\n" : "") << std::flush;
}

// Who the CLI runs as, from the configuration.
// The option that shortens a request's deadline (config request_timeout) for one verb.
void add_timeout_option(CLI::App& cli, std::int64_t& ms) {
  cli.add_option("--timeout", ms, "a deadline shorter than the configured request_timeout")
      ->type_name("MS")
      ->check(CLI::PositiveNumber);
}

request_meta cli_meta(app& a, std::int64_t timeout_ms) {
  request_meta meta;
  meta.principal = a.config().cli_principal;
  auto budget = a.config().request_timeout;
  if (timeout_ms > 0) budget = std::min(budget, std::chrono::milliseconds(timeout_ms));
  meta.deadline = clock::now() + budget;
  return meta;
}

}  // namespace

int report(const error& e) {
  std::cerr << "error: " << e.describe() << std::endl;
  return e.category == errc::validation || e.category == errc::not_found ||
                 e.category == errc::idempotency_key_reused
             ? 2
             : 1;
}

std::optional<int> parse(CLI::App& cli, std::span<const std::string> args,
                         std::string_view synopsis) {
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // as CLI11 takes them
  try {
    cli.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    std::cout << cli.help();
    return 0;
  } catch (const CLI::ParseError&) {
    return report({errc::validation, fmt::format("usage: {}", synopsis), {}});
  }
  return std::nullopt;
}

int send(app& a, std::span<const std::string> args) {
  CLI::App cli{
      "Runs a command through this application's handlers; a retry with the same KEY "
      "prints the first outcome and has no effect.",
      "send"};
  std::string name, body_text, key;
  cli.add_option("NAME", name, "the command's wire name")->required();
  cli.add_option("JSON", body_text, "the command, a JSON object")->required();
  const auto* id = cli.add_option("--id", key, "an idempotency key (1 to 255 visible characters)")
                       ->type_name("KEY");
  std::int64_t timeout_ms = 0;
  add_timeout_option(cli, timeout_ms);
  if (auto done = parse(cli, args, "send NAME JSON [--id KEY] [--timeout MS]")) return *done;
  auto body = parse_json(body_text);
  if (!body) return report(body.error());
  auto meta = cli_meta(a, timeout_ms);
  if (id->count() > 0) {
    auto command_id = command_id_for(meta.principal, key);
    if (!command_id) return report(command_id.error());
    meta.command_id = std::move(*command_id);
  }
  auto r = a.commands().send_json(name, *body, meta);
  if (!r) return report(r.error());
  print_json({{"result", r->result}, {"position", r->position.to_string()}});
  return 0;
}

// Sends one command from many threads at once, in this process, for a while: the rate the
// application's own handlers and store reach, to hold an HTTP benchmark's rate against.
int load(app& a, std::span<const std::string> args) {
  CLI::App cli{"Sends a command from CLIENTS threads for SECONDS, and prints the rate.", "load"};
  std::string name, body_text;
  int clients = 64;
  double seconds = 5;
  cli.add_option("NAME", name, "the command's wire name")->required();
  cli.add_option("JSON", body_text, "the command, a JSON object")->required();
  cli.add_option("--clients", clients, "threads sending at once (default 64)")
      ->check(CLI::Range(1, 1024));
  cli.add_option("--seconds", seconds, "how long (default 5)")->check(CLI::Range(0.1, 3600.0));
  if (auto done = parse(cli, args, "load NAME JSON [--clients N] [--seconds S]")) return *done;
  if (!std::isfinite(seconds))
    return report({errc::validation, "--seconds must be a number of seconds", {}});
  auto body = parse_json(body_text);
  if (!body) return report(body.error());
  if (auto first = a.commands().send_json(name, *body, cli_meta(a, 0)); !first)
    return report(first.error());  // (a command that cannot run is not measured)
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> done{0}, failed{0};
  std::mutex first_failure_mutex;
  std::optional<error> first_failure;
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(clients));
  const auto start = clock::now();
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        auto r = a.commands().send_json(name, *body, cli_meta(a, 0));
        if (r) {
          ++done;
          continue;
        }
        ++failed;
        const std::lock_guard lock(first_failure_mutex);
        if (!first_failure) first_failure = r.error();
      }
    });
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double took = std::chrono::duration<double>(clock::now() - start).count();
  print_json({{"command", name},
              {"clients", clients},
              {"seconds", took},
              {"sent", done.load()},
              {"failed", failed.load()},
              {"commands_per_s", static_cast<double>(done.load()) / took}});
  if (!first_failure) return 0;
  if (done.load() == 0) return report(*first_failure);  // nothing went through: a failure
  std::cerr << "the first of " << failed.load() << " failures: " << first_failure->describe()
            << std::endl;
  return 0;
}

int ask(app& a, std::span<const std::string> args) {
  CLI::App cli{"Runs a query through this application's handlers.", "ask"};
  std::string name, body_text, level;
  cli.add_option("NAME", name, "the query's wire name")->required();
  cli.add_option("JSON", body_text, "the query, a JSON object")->required();
  const auto* consistency_option =
      cli.add_option("--consistency", level,
                     "how current the views it reads must be (default: eventual); waiting for "
                     "them starts this process's projector")
          ->type_name("eventual|strong|bounded=MS|at_least=TOKEN");
  std::int64_t timeout_ms = 0;
  add_timeout_option(cli, timeout_ms);
  if (auto done = parse(
          cli, args,
          "ask NAME JSON [--consistency eventual|strong|bounded=MS|at_least=TOKEN] [--timeout MS]"))
    return *done;
  auto body = parse_json(body_text);
  if (!body) return report(body.error());
  auto meta = cli_meta(a, timeout_ms);
  if (consistency_option->count() > 0) {
    auto wanted = parse_consistency(level);
    if (!wanted) return report(wanted.error());
    meta.consistency = *wanted;
    // Someone must move the views: this process, unless another one leads.
    a.start_workers();
  }
  auto r = a.queries().ask_json(name, *body, meta);
  if (!r) return report(r.error());
  const auto position = r->position.empty() ? a.read_consistency().position_of(name) : r->position;
  print_json({{"result", r->result}, {"position", position.to_string()}});
  return 0;
}

int events(app& a, std::span<const std::string> args) {
  CLI::App cli{"The event log.", "events"};
  cli.require_subcommand(1);
  bool follow = false;
  auto* tail = cli.add_subcommand("tail", "Prints the event log, oldest first, as JSON lines.");
  tail->add_flag("--follow", follow, "then wait for new events and print them too");
  tail->allow_extras();  // ignored, as they always were
  if (auto done = parse(cli, args, "events tail [--follow]")) return *done;
  position_token after;
  for (;;) {
    auto batch = a.store().read_events(after, 500);
    for (auto& e : batch) {
      // As the app's readers see it: upcast, with the name it is stored under when that differs.
      const std::string stored_type = e.type;
      a.upcasters().apply(e.type, e.payload);
      json line{{"position", e.position.to_string()}, {"stream", e.stream},
                {"version", e.stream_version},        {"type", e.type},
                {"payload", e.payload.value()},       {"correlation_id", e.correlation_id},
                {"recorded_at_ms", e.recorded_at_ms}};
      if (stored_type != e.type) line["stored_type"] = stored_type;
      std::cout << line.dump() << '\n';
      after = e.position;
    }
    std::cout.flush();
    if (batch.empty()) {
      if (!follow) return 0;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
}

int status(app& a, std::span<const std::string> args) {
  CLI::App cli{"Prints the database, the log head, migrations, handlers and projections.",
               "status"};
  cli.allow_extras();  // ignored, as they always were
  if (auto done = parse(cli, args, "status")) return *done;
  json migrations = json::object();
  for (const auto& component : a.migration_components())
    migrations[component] = a.store().applied_migrations(component);
  migrations["cleave"] = a.store().applied_migrations("cleave");
  json commands = json::array(), queries = json::array();
  for (const auto* i : a.commands().handled()) commands.push_back(i->wire_name);
  for (const auto* i : a.queries().handled()) queries.push_back(i->wire_name);
  print_json({{"database", a.config().database},
              {"head", a.store().head().to_string()},
              {"migrations", migrations},
              {"commands", commands},
              {"queries", queries},
              {"projections", projections_json(a.projections())}});
  return 0;
}

int project(app& a, std::span<const std::string> args) {
  CLI::App cli{
      "Keeps the async projections current until SIGINT/SIGTERM (one process of several "
      "leads; the others stand by).",
      "project"};
  cli.allow_extras();  // ignored, as they always were
  std::vector<std::string> groups;
  cli.add_option("--group", groups,
                 "run only this group of projections (repeatable; \"\" is the main group)");
  if (auto done = parse(cli, args, "project [--group NAME]...")) return *done;
  block_stop_signals();
  a.migrate();
  try {
    a.projections().start(groups);
  } catch (const std::invalid_argument& e) {
    return report({errc::validation, e.what(), {}});
  }
  std::cout << "projecting " << a.projections().names().size()
            << " projection(s); the leader applies, the others stand by" << std::endl;
  wait_for_stop_signal();
  a.projections().stop();
  return 0;
}

int projections(app& a, std::span<const std::string> args) {
  CLI::App cli{"The read side's views: where they stand, rebuilds, dead letters.", "projections"};
  cli.require_subcommand(1);
  std::string name;
  bool verify = false;
  auto* list = cli.add_subcommand("list", "Prints where each projection stands.");
  auto* rebuild = cli.add_subcommand(
      "rebuild", "Rebuilds a projection's view beside the live one, then swaps.");
  rebuild->add_option("NAME", name, "the projection")->required();
  rebuild->add_flag("--verify", verify,
                    "compare the rebuilt view with the live one first; keep the live one when "
                    "they differ");
  auto* replay = cli.add_subcommand("replay-dead-letters",
                                    "Runs the events parked by a failed handler through it again.");
  replay->add_option("NAME", name, "the projection")->required();
  auto* discard = cli.add_subcommand("discard-rebuild",
                                     "Drops the shadow view of an unfinished rebuild (one that "
                                     "failed verification, say); the live view stays.");
  discard->add_option("NAME", name, "the projection")->required();
  if (auto done = parse(cli, args,
                        "projections list | rebuild NAME [--verify] | replay-dead-letters NAME | "
                        "discard-rebuild NAME"))
    return *done;
  auto& p = a.projections();
  if (list->parsed()) {
    print_json(projections_json(p));
    return 0;
  }
  if (rebuild->parsed()) {
    rebuild_options options;
    options.verify = verify;
    options.on_progress = draw_progress;
    const auto done = p.rebuild(name, options);
    print_json(rebuild_json(done));
    return done.swapped ? 0 : 1;
  }
  if (replay->parsed()) {
    print_json(
        {{"replayed", p.replay_dead_letters(name)}, {"still_parked", p.dead_letters(name).size()}});
    return 0;
  }
  p.discard_rebuild(name);
  std::cout << "discarded" << std::endl;
  return 0;
}

int schedule(app& a, std::span<const std::string> args) {
  CLI::App cli{"Scheduled commands: those pending, soonest first, then those that failed.",
               "schedule"};
  cli.require_subcommand(1);
  std::size_t limit = 200;
  std::string id;
  auto* list = cli.add_subcommand("list", "Prints the scheduled commands as JSON.");
  list->add_option("--limit", limit, "at most this many")->check(CLI::Range(1, 100000));
  auto* retry = cli.add_subcommand("retry", "Puts a failed schedule back, due now.");
  retry->add_option("ID", id, "the schedule's id (schedule list)")->required();
  auto* discard = cli.add_subcommand("discard", "Deletes a failed schedule.");
  discard->add_option("ID", id, "the schedule's id (schedule list)")->required();
  if (auto done = parse(cli, args, "schedule list [--limit N] | retry ID | discard ID"))
    return *done;
  if (list->parsed()) {
    print_json(schedules_json(a.schedules(), limit));
    return 0;
  }
  const bool done = retry->parsed() ? a.schedules().retry(id) : a.schedules().discard(id);
  if (!done) return report({errc::not_found, fmt::format("no failed schedule '{}'", id), {}});
  std::cout << (retry->parsed() ? "due again" : "discarded") << std::endl;
  return 0;
}

int migrate(app& a, std::span<const std::string> args) {
  CLI::App cli{"Applies the application's migrations.", "migrate"};
  cli.allow_extras();  // ignored, as they always were
  if (auto done = parse(cli, args, "migrate")) return *done;
  a.migrate();
  std::cout << "migrated" << std::endl;
  return 0;
}

void add_builtin(app& a) {
  a.add_verb("send",
             "send NAME JSON [--id KEY] [--timeout MS]\n"
             "                      run a command through this application's handlers; a retry\n"
             "                      with the same KEY prints the first outcome and has no effect",
             send);
  a.add_verb("load",
             "load NAME JSON [--clients N] [--seconds S]\n"
             "                      send a command from N threads (64) for S seconds (5) in\n"
             "                      this process, and print the rate",
             load);
  a.add_verb("ask",
             "ask NAME JSON [--consistency eventual|strong|bounded=MS|at_least=TOKEN]\n"
             "    [--timeout MS]\n"
             "                      run a query through this application's handlers",
             ask);
  a.add_verb("events", "events tail [--follow]  print the event log, oldest first, as JSON lines",
             events);
  a.add_verb("status", "status              the database, the log head, migrations and handlers",
             status);
  a.add_verb("project",
             "project [--group NAME]...\n"
             "                      keep the async projections (of these groups) current until\n"
             "                      SIGINT/SIGTERM (one process of several leads each group; the\n"
             "                      others stand by)",
             project);
  a.add_verb(
      "projections",
      "projections list | rebuild NAME [--verify] | replay-dead-letters NAME |\n"
      "            discard-rebuild NAME\n"
      "                      the read side's views: where they stand, rebuilds, dead letters",
      projections);
  a.add_verb("migrate", "migrate             apply the application's migrations", migrate);
  a.add_verb("schedule",
             "schedule list [--limit N] | retry ID | discard ID\n"
             "                      the scheduled commands: pending (soonest first) and failed;\n"
             "                      a failed one sent again, or dropped",
             schedule);
}

}  // namespace cleave::verbs
