#include <cleave/app/app.hpp>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>

#include <pthread.h>
#include <csignal>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cleave/postgres/store.hpp>
#include <cleave/sqlite/store.hpp>

namespace cleave {

namespace {

// The configuration file's shape: every member optional.
struct principal_entry {
  std::string subject;
  std::vector<std::string> roles;
};
CLEAVE_RECORD(principal_entry, subject, roles)

struct openapi_entry {
  std::optional<std::string> title, version;
};
CLEAVE_RECORD(openapi_entry, title, version)

struct config_file {
  std::optional<std::string> database, listen, log_level, static_dir;
  std::optional<std::int64_t> max_body_bytes, max_header_bytes, max_json_depth, max_connections,
      idle_timeout_seconds, workers, max_parked_reads;
  std::optional<std::map<std::string, principal_entry>> tokens;
  std::optional<std::map<std::string, std::string>> roles;
  std::optional<principal_entry> cli_principal;
  std::optional<bool> run_projector;
  std::optional<std::vector<std::string>> replicas;
  std::optional<std::int64_t> replica_max_lag_ms;
  std::optional<openapi_entry> openapi;
};
CLEAVE_RECORD(config_file, database, listen, log_level, static_dir, max_body_bytes,
              max_header_bytes, max_json_depth, max_connections, idle_timeout_seconds, workers,
              tokens, roles, cli_principal, run_projector, replicas, replica_max_lag_ms, openapi,
              max_parked_reads)

void print_json(const json& j) {
  std::cout << j.dump(2) << std::endl;
}

int report(const error& e) {
  std::cerr << "error: " << e.describe() << std::endl;
  return e.category == errc::validation || e.category == errc::not_found ||
                 e.category == errc::idempotency_key_reused
             ? 2
             : 1;
}

}  // namespace

result<app_config> load_config(const std::filesystem::path& file) {
  app_config c;
  if (!file.empty() && std::filesystem::exists(file)) {
    std::ifstream in(file);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto parsed = from_json_text<config_file>(text);
    if (!parsed) {
      auto e = parsed.error();
      e.message = fmt::format("{}: {}", file.string(), e.message);
      return std::unexpected(e);
    }
    const auto& f = *parsed;
    if (f.database) c.database = *f.database;
    if (f.listen) c.listen = *f.listen;
    if (f.log_level) c.log_level = *f.log_level;
    if (f.static_dir) c.static_dir = *f.static_dir;
    auto positive = [&](const std::optional<std::int64_t>& v, auto& into,
                        const char* name) -> result<void> {
      if (!v) return {};
      if (*v <= 0) return invalid(name, "must be positive");
      into = static_cast<std::remove_reference_t<decltype(into)>>(*v);
      return {};
    };
    for (auto r : {positive(f.max_body_bytes, c.max_body_bytes, "max_body_bytes"),
                   positive(f.max_header_bytes, c.max_header_bytes, "max_header_bytes"),
                   positive(f.max_json_depth, c.max_json_depth, "max_json_depth"),
                   positive(f.max_connections, c.max_connections, "max_connections"),
                   positive(f.workers, c.workers, "workers"),
                   positive(f.max_parked_reads, c.max_parked_reads, "max_parked_reads")})
      if (!r) return std::unexpected(r.error());
    if (f.idle_timeout_seconds) {
      if (*f.idle_timeout_seconds <= 0) return invalid("idle_timeout_seconds", "must be positive");
      c.idle_timeout = std::chrono::seconds(*f.idle_timeout_seconds);
    }
    if (f.tokens)
      for (const auto& [token, who] : *f.tokens)
        c.tokens[token] = principal{who.subject, who.roles};
    if (f.roles) c.roles = *f.roles;
    if (f.cli_principal) c.cli_principal = {f.cli_principal->subject, f.cli_principal->roles};
    if (f.run_projector) c.run_projector = *f.run_projector;
    if (f.openapi && f.openapi->title) c.api_title = *f.openapi->title;
    if (f.openapi && f.openapi->version) c.api_version = *f.openapi->version;
    if (f.replicas) c.replicas = *f.replicas;
    if (f.replica_max_lag_ms) {
      if (*f.replica_max_lag_ms <= 0) return invalid("replica_max_lag_ms", "must be positive");
      c.replica_max_lag = std::chrono::milliseconds(*f.replica_max_lag_ms);
    }
  }
  if (const char* v = std::getenv("CLEAVE_DATABASE"); v && *v) c.database = v;
  if (const char* v = std::getenv("CLEAVE_LISTEN"); v && *v) c.listen = v;
  if (const char* v = std::getenv("CLEAVE_LOG_LEVEL"); v && *v) c.log_level = v;
  if (const char* v = std::getenv("CLEAVE_REPLICAS"); v && *v) {
    c.replicas.clear();
    std::string_view rest = v;
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      if (auto one = rest.substr(0, comma); !one.empty()) c.replicas.emplace_back(one);
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    }
  }
  if (const char* v = std::getenv("CLEAVE_PROJECTOR"); v && *v) {
    const std::string_view on = v;
    if (on != "on" && on != "off") return invalid("CLEAVE_PROJECTOR", "must be on or off");
    c.run_projector = on == "on";
  }
  return c;
}

std::unique_ptr<store> open_store(const app_config& config) {
  const auto& database = config.database;
  if (database.starts_with("postgresql://") || database.starts_with("postgres://")) {
    postgres::options o{.url = database};
    o.replicas = config.replicas;
    o.replica_max_lag = config.replica_max_lag;
    return std::make_unique<postgres::store>(o);
  }
  if (!config.replicas.empty())
    throw error_exception({errc::validation,
                           "replicas are PostgreSQL hot standbys: the database must be one too",
                           {}});
  return std::make_unique<sqlite::store>(sqlite::options{.path = database});
}

json replicas_json(store& s) {
  json out = json::array();
  for (const auto& r : s.replicas())
    out.push_back(
        {{"url", r.url},
         {"replay_lsn", fmt::format("{:X}/{:X}", r.replay_lsn >> 32, r.replay_lsn & 0xffffffff)},
         {"lag_bytes", r.lag_bytes},
         {"lag_seconds", r.lag_seconds},
         {"set_aside", r.set_aside},
         {"reads", r.reads}});
  return out;
}

result<consistency> parse_consistency(std::string_view text) {
  auto bad = [&] {
    return invalid(
        "consistency",
        fmt::format("'{}' is not eventual, strong, bounded=<ms> or at_least=<token>", text));
  };
  if (text == "eventual") return eventual();
  if (text == "strong") return strong();
  if (text.starts_with("bounded=")) {
    const auto digits = text.substr(8);
    std::int64_t ms = -1;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), ms);
    if (ec != std::errc{} || end != digits.data() + digits.size() || ms < 0) return bad();
    return bounded(std::chrono::milliseconds(ms));
  }
  if (text.starts_with("at_least=")) {
    auto token = position_token::parse(text.substr(9));
    if (!token) return std::unexpected(token.error());
    return at_least(*token);
  }
  return bad();
}

namespace {
sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}
}  // namespace

void block_stop_signals() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void wait_for_stop_signal() {
  const sigset_t set = stop_signals();
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("signal {}: stopping", sig);
}

namespace {

json status_json(const projection_status& s) {
  json out{{"name", s.name},
           {"mode", s.mode == projection_mode::inline_        ? "inline"
                    : s.mode == projection_mode::memory       ? "memory"
                    : s.mode == projection_mode::materialized ? "materialized"
                                                              : "async"},
           {"checkpoint", s.checkpoint.to_string()},
           {"lag_events", s.lag_events},
           {"lag_seconds", s.lag_seconds},
           {"dead_letters", s.dead_letters}};
  if (s.rebuild_position) out["rebuild_position"] = *s.rebuild_position;
  return out;
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

}  // namespace

json projections_json(projector& p) {
  json out = json::array();
  for (const auto& name : p.names()) out.push_back(status_json(p.status(name)));
  return out;
}

app::app(app_config config)
    : config_(std::move(config)),
      store_(open_store(config_)),
      projector_(std::make_unique<cleave::projector>(*store_)),
      commands_(&projector_->source()),
      queries_(store_.get()) {
  // Logs go to stderr: stdout is for results (verbs, JSON lines).
  static std::once_flag to_stderr;
  std::call_once(to_stderr, [] {
    spdlog::set_default_logger(std::make_shared<spdlog::logger>(
        "cleave", std::make_shared<spdlog::sinks::stderr_color_sink_mt>()));
  });
  spdlog::set_level(spdlog::level::from_str(config_.log_level));
  if (!config_.roles.empty()) {
    // First on both buses: nothing else runs for a caller without the role.
    const std::map<std::string, std::string, std::less<>> roles(config_.roles.begin(),
                                                               config_.roles.end());
    commands_.use<authorization>(roles);
    queries_.use<authorization>(roles);
  }
  consistency_ = &queries_.use<read_your_writes>(*projector_);
  add_verb("send",
           "send NAME JSON [--id KEY]\n"
           "                      run a command through this application's handlers; a retry\n"
           "                      with the same KEY prints the first outcome and has no effect",
           [](app& a, std::span<const std::string> args) {
             if (args.size() != 2 && !(args.size() == 4 && args[2] == "--id"))
               return report({errc::validation, "usage: send NAME JSON [--id KEY]", {}});
             auto body = parse_json(args[1]);
             if (!body) return report(body.error());
             request_meta meta;
             meta.principal = a.config().cli_principal;
             if (args.size() == 4) {
               auto id = command_id_for(meta.principal, args[3]);
               if (!id) return report(id.error());
               meta.command_id = std::move(*id);
             }
             auto r = a.commands().send_json(args[0], *body, meta);
             if (!r) return report(r.error());
             print_json({{"result", r->result}, {"position", r->position.to_string()}});
             return 0;
           });
  add_verb("ask",
           "ask NAME JSON [--consistency eventual|strong|bounded=MS|at_least=TOKEN]\n"
           "                      run a query through this application's handlers",
           [](app& a, std::span<const std::string> args) {
             if (args.size() != 2 && !(args.size() == 4 && args[2] == "--consistency"))
               return report({errc::validation,
                              "usage: ask NAME JSON [--consistency eventual|strong|bounded=MS|"
                              "at_least=TOKEN]",
                              {}});
             auto body = parse_json(args[1]);
             if (!body) return report(body.error());
             request_meta meta;
             meta.principal = a.config().cli_principal;
             if (args.size() == 4) {
               auto wanted = parse_consistency(args[3]);
               if (!wanted) return report(wanted.error());
               meta.consistency = *wanted;
               // Someone must move the views: this process, unless another one leads.
               a.start_workers();
             }
             auto r = a.queries().ask_json(args[0], *body, meta);
             if (!r) return report(r.error());
             print_json({{"result", r->result}});
             return 0;
           });
  add_verb("events", "events tail [--follow]  print the event log, oldest first, as JSON lines",
           [](app& a, std::span<const std::string> args) {
             if (args.empty() || args[0] != "tail")
               return report({errc::validation, "usage: events tail [--follow]", {}});
             const bool follow = args.size() > 1 && args[1] == "--follow";
             position_token after;
             for (;;) {
               auto batch = a.store().read_events(after, 500);
               for (const auto& e : batch) {
                 std::cout << json{{"position", e.position.to_string()},
                                   {"stream", e.stream},
                                   {"version", e.stream_version},
                                   {"type", e.type},
                                   {"payload", e.payload.value()},
                                   {"correlation_id", e.correlation_id},
                                   {"recorded_at_ms", e.recorded_at_ms}}
                                  .dump()
                           << '\n';
                 after = e.position;
               }
               std::cout.flush();
               if (batch.empty()) {
                 if (!follow) return 0;
                 std::this_thread::sleep_for(std::chrono::milliseconds(200));
               }
             }
           });
  add_verb("status", "status              the database, the log head, migrations and handlers",
           [](app& a, std::span<const std::string>) {
             json migrations = json::object();
             for (const auto& [component, steps] : a.migrations_)
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
           });
  add_verb("project",
           "project             keep the async projections current until SIGINT/SIGTERM (one\n"
           "                      process of several leads; the others stand by)",
           [](app& a, std::span<const std::string>) {
             block_stop_signals();
             a.migrate();
             a.projections().start();
             std::cout << "projecting " << a.projections().names().size()
                       << " projection(s); the leader applies, the others stand by" << std::endl;
             wait_for_stop_signal();
             a.projections().stop();
             return 0;
           });
  add_verb("projections",
           "projections list | rebuild NAME [--verify] | replay-dead-letters NAME |\n"
           "            discard-rebuild NAME\n"
           "                      the read side's views: where they stand, rebuilds, dead letters",
           [](app& a, std::span<const std::string> args) {
             const auto usage = error{errc::validation,
                                      "usage: projections list | rebuild NAME [--verify] | "
                                      "replay-dead-letters NAME | discard-rebuild NAME",
                                      {}};
             if (args.empty()) return report(usage);
             auto& p = a.projections();
             if (args[0] == "list" && args.size() == 1) {
               print_json(projections_json(p));
               return 0;
             }
             if (args.size() < 2) return report(usage);
             const auto& name = args[1];
             if (args[0] == "rebuild" && args.size() <= 3) {
               rebuild_options options;
               options.verify = args.size() == 3 && args[2] == "--verify";
               if (args.size() == 3 && !options.verify) return report(usage);
               options.on_progress = draw_progress;
               const auto done = p.rebuild(name, options);
               print_json({{"swapped", done.swapped},
                           {"applied", done.applied},
                           {"resumed", done.resumed},
                           {"differences", done.differences}});
               return done.swapped ? 0 : 1;
             }
             if (args[0] == "replay-dead-letters" && args.size() == 2) {
               print_json({{"replayed", p.replay_dead_letters(name)},
                           {"still_parked", p.dead_letters(name).size()}});
               return 0;
             }
             if (args[0] == "discard-rebuild" && args.size() == 2) {
               p.discard_rebuild(name);
               std::cout << "discarded" << std::endl;
               return 0;
             }
             return report(usage);
           });
  add_verb("migrate", "migrate             apply the application's migrations",
           [](app& a, std::span<const std::string>) {
             a.migrate();
             std::cout << "migrated" << std::endl;
             return 0;
           });
}

app::~app() {
  stop_workers();
  // Joined without the lock, which a rebuild still running takes to record how it ended.
  std::map<std::string, std::thread> threads;
  {
    std::lock_guard lock(jobs_mutex_);
    threads.swap(job_threads_);
  }
  for (auto& [name, t] : threads)
    if (t.joinable()) t.join();
}

void app::reads(std::string wire_name, std::vector<std::string> projection_names) {
  consistency_->reads(std::move(wire_name), std::move(projection_names));
}

void app::start_workers() {
  if (config_.run_projector) projector_->start();
}

void app::stop_workers() {
  projector_->stop();
}

bool app::start_rebuild(const std::string& name, bool verify) {
  projector_->status(name);  // throws not_found for an unknown name
  std::lock_guard lock(jobs_mutex_);
  auto& job = jobs_[name];
  if (job.running) return false;
  if (auto t = job_threads_.find(name); t != job_threads_.end() && t->second.joinable())
    t->second.join();
  job = rebuild_job{};
  job.running = true;
  job_threads_[name] = std::thread([this, name, verify] {
    rebuild_options options;
    options.verify = verify;
    options.on_progress = [&](const rebuild_progress& p) {
      std::lock_guard progress_lock(jobs_mutex_);
      jobs_[name].progress = p;
    };
    std::string failure;
    try {
      projector_->rebuild(name, options);
    } catch (const error_exception& e) {
      failure = e.error().describe();
    } catch (const std::exception& e) {
      failure = e.what();
    }
    std::lock_guard done_lock(jobs_mutex_);
    jobs_[name].running = false;
    jobs_[name].error = failure;
  });
  return true;
}

std::map<std::string, app::rebuild_job> app::rebuild_jobs() const {
  std::lock_guard lock(jobs_mutex_);
  return jobs_;
}

void app::add_migrations(std::string component, std::span<const migration> steps) {
  migrations_.emplace_back(std::move(component), steps);
}

void app::migrate() {
  for (const auto& [component, steps] : migrations_) store_->migrate(component, steps);
  for (auto& [p, views] : std::exchange(pending_projections_, {}))
    projector_->add(std::move(p), views);
  if (auto wiring = consistency_->check(queries_); !wiring) throw error_exception(wiring.error());
}

void app::add_projection(projection p, cleave::store* views) {
  pending_projections_.emplace_back(std::move(p), views);
}

void app::add_verb(std::string name, std::string usage, verb run) {
  verbs_[std::move(name)] = verb_entry{std::move(usage), std::move(run)};
}

int app::main(int argc, char** argv) {
  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help") {
    std::cout << "usage: " << (argc > 0 ? argv[0] : "app") << " VERB [ARGS]\n\nverbs:\n";
    for (const auto& [name, v] : verbs_) std::cout << "  " << v.usage << '\n';
    return args.empty() ? 2 : 0;
  }
  auto it = verbs_.find(args[0]);
  if (it == verbs_.end()) {
    std::cerr << "unknown verb '" << args[0] << "'; try `help`" << std::endl;
    return 2;
  }
  try {
    return it->second.run(*this, std::span<const std::string>(args).subspan(1));
  } catch (const error_exception& e) {
    return report(e.error());
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
}

}  // namespace cleave
