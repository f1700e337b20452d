// The application shell (see app.hpp): its configuration (load_config), the store, buses and
// projector it wires, rebuild jobs, migrations, and main(), which runs a verb (the built-in
// verbs are in verbs.cpp).

#include <cleave/app/app.hpp>

#include "verbs.hpp"

#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>
#include <thread>
#include <tuple>
#include <utility>

#include <pthread.h>
#include <csignal>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cleave/store/backends.hpp>

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
      idle_timeout_seconds, workers, io_threads, max_parked_reads, max_live_streams,
      live_heartbeat_ms;
  std::optional<std::map<std::string, principal_entry>> tokens;
  std::optional<std::map<std::string, std::string>> roles;
  std::optional<principal_entry> cli_principal;
  std::optional<bool> run_projector, group_commit, inline_queries;
  std::optional<std::vector<std::string>> replicas;
  std::optional<std::int64_t> replica_max_lag_ms, request_timeout_ms;
  std::optional<openapi_entry> openapi;
  std::optional<json> settings;
};
CLEAVE_RECORD(config_file, database, listen, log_level, static_dir, max_body_bytes,
              max_header_bytes, max_json_depth, max_connections, idle_timeout_seconds, workers,
              io_threads, tokens, roles, cli_principal, run_projector, replicas, replica_max_lag_ms,
              openapi, max_parked_reads, group_commit, inline_queries, request_timeout_ms, settings,
              max_live_streams, live_heartbeat_ms)

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
    // `most`: the largest value taken; by default what the setting holds (never cut short).
    auto positive = [&](const std::optional<std::int64_t>& v, auto& into, const char* name,
                        std::int64_t most =
                            std::numeric_limits<std::int64_t>::max()) -> result<void> {
      if (!v) return {};
      if (*v <= 0) return invalid(name, "must be positive");
      using setting = std::remove_reference_t<decltype(into)>;
      if (std::cmp_greater(most, std::numeric_limits<setting>::max()))
        most = static_cast<std::int64_t>(std::numeric_limits<setting>::max());
      if (*v > most) return invalid(name, fmt::format("must be at most {}", most));
      into = static_cast<setting>(*v);
      return {};
    };
    // A thread each: a typo's extra digits would otherwise start that many.
    constexpr std::int64_t most_threads = 1024;
    for (auto r : {positive(f.max_body_bytes, c.max_body_bytes, "max_body_bytes"),
                   positive(f.max_header_bytes, c.max_header_bytes, "max_header_bytes"),
                   positive(f.max_json_depth, c.max_json_depth, "max_json_depth"),
                   positive(f.max_connections, c.max_connections, "max_connections"),
                   positive(f.workers, c.workers, "workers", most_threads),
                   positive(f.io_threads, c.io_threads, "io_threads", most_threads),
                   positive(f.max_parked_reads, c.max_parked_reads, "max_parked_reads"),
                   positive(f.max_live_streams, c.max_live_streams, "max_live_streams")})
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
    if (f.group_commit) c.group_commit = *f.group_commit;
    if (f.inline_queries) c.inline_queries = *f.inline_queries;
    if (f.openapi && f.openapi->title) c.api_title = *f.openapi->title;
    if (f.openapi && f.openapi->version) c.api_version = *f.openapi->version;
    if (f.replicas) c.replicas = *f.replicas;
    if (f.settings) {
      if (!f.settings->is_object()) return invalid("settings", "must be an object");
      c.settings = *f.settings;
    }
    for (auto [value, into, name] :
         {std::tuple{f.replica_max_lag_ms, &c.replica_max_lag, "replica_max_lag_ms"},
          std::tuple{f.request_timeout_ms, &c.request_timeout, "request_timeout_ms"},
          std::tuple{f.live_heartbeat_ms, &c.live_heartbeat, "live_heartbeat_ms"}}) {
      if (!value) continue;
      if (*value <= 0) return invalid(name, "must be positive");
      *into = std::chrono::milliseconds(*value);
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
  for (auto [name, setting] : {std::pair{"CLEAVE_PROJECTOR", &c.run_projector},
                               std::pair{"CLEAVE_GROUP_COMMIT", &c.group_commit}}) {
    if (const char* v = std::getenv(name); v && *v) {
      const std::string_view on = v;
      if (on != "on" && on != "off") return invalid(name, "must be on or off");
      *setting = on == "on";
    }
  }
  return c;
}

std::unique_ptr<store> open_store(const app_config& config) {
  return open_store(store_settings{config.database, config.replicas, config.replica_max_lag});
}

json replicas_json(store& s) {
  json out = json::array();
  for (const auto& r : s.replicas())
    out.push_back(
        {{"url", r.url},
         {"replay_lsn", fmt::format("{:X}/{:X}", r.replay_lsn >> 32, r.replay_lsn & 0xffffffff)},
         {"lag_bytes", r.lag_bytes},
         {"lag_seconds", r.up ? json(r.lag_seconds) : json(nullptr)},
         {"up", r.up},
         {"set_aside", r.set_aside},
         {"reads", r.reads}});
  return out;
}

namespace {

// One level as spelled: "eventual", "strong", "bounded=<ms>" or "at_least=<token>"; nullopt for
// anything else but a malformed token, which says what is wrong with it.
std::optional<result<consistency>> parse_level(std::string_view text) {
  if (text == "eventual") return eventual();
  if (text == "strong") return strong();
  if (text.starts_with("bounded=")) {
    const auto digits = text.substr(8);
    std::int64_t ms = -1;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), ms);
    if (ec != std::errc{} || end != digits.data() + digits.size() || ms < 0) return std::nullopt;
    return bounded(std::chrono::milliseconds(ms));
  }
  if (text.starts_with("at_least=")) {
    auto token = position_token::parse(text.substr(9));
    if (!token) return std::unexpected(token.error());
    return at_least(*token);
  }
  return std::nullopt;
}

}  // namespace

result<consistency> parse_consistency(std::string_view text) {
  constexpr std::string_view accepting = ";dead_letters=accept";  // at most once, at the end
  const bool accepts = text.ends_with(accepting);
  auto wanted = parse_level(accepts ? text.substr(0, text.size() - accepting.size()) : text);
  if (!wanted)
    return invalid("consistency",
                   fmt::format("'{}' is not eventual, strong, bounded=<ms> or at_least=<token> "
                               "(each optionally followed by ;dead_letters=accept)",
                               text));
  if (accepts && *wanted) **wanted = (*wanted)->accepting_dead_letters();
  return std::move(*wanted);
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
  if (!s.version.empty()) out["version"] = s.version;
  if (s.upgrading) out["upgrading"] = true;
  if (!s.group.empty()) out["group"] = s.group;
  // Its units, where it has several or where processes share them (an owner).
  if (s.units.size() > 1 || (s.units.size() == 1 && !s.units[0].owner.empty())) {
    json units = json::array();
    for (const auto& u : s.units)
      units.push_back({{"name", u.name},
                       {"checkpoint", u.checkpoint.to_string()},
                       {"lag_events", u.lag_events},
                       {"owner", u.owner}});
    out["units"] = std::move(units);
  }
  return out;
}

}  // namespace

json rebuild_json(const rebuild_progress& p) {
  json out{{"swapped", p.swapped}, {"applied", p.applied},         {"total", p.total},
           {"resumed", p.resumed}, {"differences", p.differences}, {"swap_ms", p.swap_ms}};
  if (!p.difference.empty()) out["difference"] = p.difference;
  return out;
}

json projections_json(projector& p) {
  json out = json::array();
  for (const auto& name : p.names()) out.push_back(status_json(p.status(name)));
  return out;
}

app::app(app_config config)
    : config_(std::move(config)),
      store_(open_store(config_)),
      projector_(std::make_unique<cleave::projector>(*store_, &upcasters_)),
      // Stacked on the projector's source: a group's members apply inline projections too.
      grouped_(config_.group_commit ? std::make_unique<cleave::group_commit>(
                                          projector_->source(), 32,
                                          std::min(config_.workers, store_->concurrent_writers()))
                                    : nullptr),
      commands_(grouped_ ? static_cast<session_source*>(grouped_.get()) : &projector_->source()),
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
  queries_.answer_positions([c = consistency_](std::string_view name, read_session& tx) {
    return c->position_in(name, tx);
  });
  scheduler_ = std::make_unique<cleave::scheduler>(
      *store_,
      [this](std::string_view wire_name, const json& payload, const request_meta& meta) {
        return commands_.send_json(wire_name, payload, meta);
      },
      scheduler_options{.request_timeout = config_.request_timeout});
  projector_->add_leader_task([this] { return scheduler_->run_due(); });
  verbs::add_builtin(*this);
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
  projector_->check_rebuildable(name);  // not_found, or validation: refused before it starts
  std::lock_guard lock(jobs_mutex_);
  auto& job = jobs_[name];
  if (job.running) return false;
  // Refused here, not in the job, when another process rebuilds it.
  std::shared_ptr<lease> reservation = projector_->reserve_rebuild(name);
  if (!reservation) return false;
  if (auto t = job_threads_.find(name); t != job_threads_.end() && t->second.joinable())
    t->second.join();
  job = rebuild_job{};
  job.running = true;
  job_threads_[name] = std::thread([this, name, verify, reservation] {
    rebuild_options options;
    options.verify = verify;
    options.reservation = reservation.get();
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

void app::add_inbox_source(std::string name, inbox_source source) {
  inboxes_[std::move(name)] = std::move(source);
}

std::map<std::string, app::rebuild_job> app::rebuild_jobs() const {
  std::lock_guard lock(jobs_mutex_);
  return jobs_;
}

void app::add_migrations(std::string component, std::span<const migration> steps) {
  migrations_.emplace_back(std::move(component), steps);
}

std::vector<std::string> app::migration_components() const {
  std::vector<std::string> out;
  out.reserve(migrations_.size());
  for (const auto& [component, steps] : migrations_) out.push_back(component);
  return out;
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
  const std::string program = argc > 0 ? argv[0] : "app";
  const auto list_verbs = [&](std::ostream& out) {
    out << "usage: " << program << " VERB [ARGS]\n\nverbs:\n";
    for (const auto& [name, v] : verbs_) out << "  " << v.usage << '\n';
    out << "\n`" << program << " VERB --help` describes a verb's arguments.\n";
  };
  if (args.empty() || args[0] == "help" || args[0] == "--help") {
    list_verbs(std::cout);
    return args.empty() ? 2 : 0;
  }
  auto it = verbs_.find(args[0]);
  if (it == verbs_.end()) {
    std::cerr << "unknown verb '" << args[0] << "'\n";
    list_verbs(std::cerr);
    return 2;
  }
  try {
    return it->second.run(*this, std::span<const std::string>(args).subspan(1));
  } catch (const error_exception& e) {
    return verbs::report(e.error());
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
}

}  // namespace cleave
