#pragma once
// An application: configuration, the store it opens, its two buses, its migrations, and the
// command-line verbs its executable offers (send, ask, events tail, status, migrate, and what
// other modules add, such as `serve`).
//
//   int main(int argc, char** argv) {
//     cleave::app app{cleave::load_config("shop.json").value()};
//     shop::install(app);            // handlers, migrations
//     cleave::http::install(app);    // the `serve` verb
//     return app.main(argc, argv);
//   }

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <cleave/core/bus.hpp>
#include <cleave/core/error.hpp>
#include <cleave/read/consistency.hpp>
#include <cleave/read/projector.hpp>
#include <cleave/store/group_commit.hpp>
#include <cleave/store/store.hpp>
#include <cleave/store/upcasting.hpp>
#include <cleave/workflow/process_manager.hpp>
#include <cleave/workflow/scheduler.hpp>
#include <cleave/write/event_sourced.hpp>

namespace cleave {

struct app_config {
  // A SQLite file (created with its folder), ":memory:", or a postgresql:// URL.
  std::string database = "var/app.db";
  // PostgreSQL hot standbys that serve queries (postgresql:// URLs), and how far one may lag
  // before reads leave it (see postgres::options).
  std::vector<std::string> replicas;
  std::chrono::milliseconds replica_max_lag{5000};
  std::string listen = "127.0.0.1:8080";
  std::size_t max_body_bytes = 1 << 20;
  std::size_t max_header_bytes = 16 << 10;
  int max_json_depth = 64;
  std::size_t max_connections = 1024;
  std::chrono::seconds idle_timeout{30};
  // Threads that run handlers (database work), apart from I/O: more than a PostgreSQL pool
  // lends to requests, so that a full pool answers 503 within pool_timeout instead of queueing.
  std::size_t workers = 8;
  // Threads that read and write HTTP connections; 0: one for each CPU the process may use (its
  // affinity mask, lowered to its cgroup's CPU quota), at most 8.
  std::size_t io_threads = 0;
  // On SQLite (a file), HTTP queries that need not wait for views (eventual, or at_least once
  // their views are there) run on their connection's I/O thread, with no hand-off to a worker.
  // A query that reads for long then holds up the other connections of its thread: turn this
  // off when some do (config file: "inline_queries": false).
  bool inline_queries = true;
  // The deadline of each command and query received over HTTP or by the CLI verbs, from when it
  // arrives (a caller may ask for less: HTTP `Cleave-Timeout: <ms>`, `send --timeout <ms>`). The
  // store spends no more than what is left of it inside the database (statement and lock
  // timeouts on PostgreSQL, the busy wait on SQLite); past it the request fails with
  // errc::timeout (HTTP 503 /problems/timeout) and nothing it did is kept. Config file:
  // "request_timeout_ms".
  std::chrono::milliseconds request_timeout{5000};
  // Reads waiting for views (read-your-writes) that the HTTP server parks, holding no thread;
  // beyond this many it answers 503 with Retry-After.
  std::size_t max_parked_reads = 4096;
  // Server-Sent Event streams open at once (live queries, the event feed); beyond this many a
  // new one is answered 503 with Retry-After. Each also counts against max_connections.
  std::size_t max_live_streams = 1024;
  // How often an idle live stream sends a comment, so that proxies keep it and a client that
  // went away is noticed (config file: "live_heartbeat_ms").
  std::chrono::milliseconds live_heartbeat{15000};
  // Bearer tokens and who they stand for; empty means no authentication.
  std::map<std::string, principal> tokens;
  // The role a command or query requires, by wire name: enforced by cleave::authorization on
  // both buses, for every caller (HTTP, the CLI verbs, in-process sends that carry a principal).
  std::map<std::string, std::string> roles;
  // Who the `send` and `ask` verbs run as (config file: "cli_principal": {"subject", "roles"}).
  principal cli_principal{"cli", {}};
  std::string log_level = "info";
  // Group commit: concurrent commands share database transactions (one commit, one flush to disk
  // for up to 32), each still atomic to its caller and applying inline projections in its own
  // savepoint (config file: "group_commit": true; CLEAVE_GROUP_COMMIT=on). Off by default.
  bool group_commit = false;
  // Whether `serve` (and `send`/`ask`) run the projector's worker in-process. Off when a
  // separate `project` process keeps the views (CLEAVE_PROJECTOR=off).
  bool run_projector = true;
  std::filesystem::path static_dir;  // files served at / (a web UI); empty for none
  // The API's name and version in /openapi.json (the file's "openapi": {"title", "version"}).
  std::string api_title = "cleave application";
  std::string api_version = "1";
  // The application's own settings (the file's "settings": {...}), for its install code to read.
  json settings = json::object();
};

// Reads a configuration: defaults, then the JSON file (when it exists; a missing file is fine, a
// malformed one is an error naming the member), then the environment: CLEAVE_DATABASE,
// CLEAVE_LISTEN, CLEAVE_LOG_LEVEL, CLEAVE_PROJECTOR and CLEAVE_GROUP_COMMIT (on/off),
// CLEAVE_REPLICAS (comma-separated).
result<app_config> load_config(const std::filesystem::path& file);

class app {
 public:
  // A verb: what `app main verb args...` runs. Returns the process exit code.
  using verb = std::function<int(app&, std::span<const std::string> args)>;

  // Opens the store named by config.database and applies cleave's own migrations.
  explicit app(app_config config);
  ~app();
  app(const app&) = delete;
  app& operator=(const app&) = delete;

  const app_config& config() const noexcept { return config_; }
  cleave::store& store() noexcept { return *store_; }
  command_bus& commands() noexcept { return commands_; }
  query_bus& queries() noexcept { return queries_; }
  // The projector: register projections on it before the first command. Commands sent through
  // commands() apply its inline projections and wake its worker.
  cleave::projector& projections() noexcept { return *projector_; }
  // Old event names and shapes, read as today's by every reader the app runs: its projector
  // (handlers, folds, memory views, rebuilds), `events tail` and the aggregates made by
  // aggregate(). Register them before the first command (not while workers run). Set-based
  // projections (`batch_sql`) see the log as stored.
  cleave::upcasters& upcasters() noexcept { return upcasters_; }
  // An event-sourced aggregate whose stream is read through upcasters():
  //   const auto accounts = app.aggregate<account, opened, deposited>().snapshot_every(100);
  template <class A, class... E>
  event_sourced<A, E...> aggregate() const {
    return event_sourced<A, E...>{&upcasters_};
  }
  // The group commit the command bus sends through (config group_commit), else null.
  cleave::group_commit* group_commits() noexcept { return grouped_.get(); }
  // Registers a projection, created and registered on the projector by migrate() after the
  // application's own migrations (its view may read or join their tables).
  void add_projection(projection p, cleave::store* views = nullptr);
  // Registers a process manager: its projection (created by migrate(), as add_projection's),
  // and how refusals of the commands it sends reach it.
  template <class State>
  void add_process_manager(const process_manager<State>& manager) {
    add_projection(manager.as_projection());
    scheduler_->on_refused(manager.name(), manager.refusal_handler());
    scheduler_->runs_as(manager.name(), manager.runs_as());
  }
  // The scheduled commands (write_context::schedule, process managers), sent by the leading
  // projector's worker when due.
  cleave::scheduler& schedules() noexcept { return *scheduler_; }
  // Declares that query `wire_name` reads the views of these projections, so that its
  // consistency requests (at_least, bounded, strong) wait for them.
  void reads(std::string wire_name, std::vector<std::string> projection_names);
  // The query behavior that makes those waits (a transport parks reads through it).
  read_your_writes& read_consistency() noexcept { return *consistency_; }

  // Starts the projector's worker when the configuration says so (idempotent); stop_workers()
  // lets the batch in progress finish. The destructor stops them too.
  void start_workers();
  void stop_workers();

  // A rebuild started in the background (HTTP admin), and how it is going.
  struct rebuild_job {
    rebuild_progress progress;
    bool running = false;
    std::string error;  // set when it failed
  };
  // Starts rebuilding projection `name` on a thread of its own; false when one is running (in
  // this process or another).
  bool start_rebuild(const std::string& name, bool verify = false);
  // The rebuilds started since the app began, by projection.
  std::map<std::string, rebuild_job> rebuild_jobs() const;

  // Where messages from outside (an inbox: cleave::nats) whose command was refused are kept:
  // the admin API lists them (GET /admin/inboxes) and sends them again (POST
  // /admin/inboxes/{name}/replay), as it does a projection's dead letters.
  struct inbox_source {
    std::function<json()> dead_letters;   // a JSON array, oldest first
    std::function<std::size_t()> replay;  // sends them again; how many now ran
  };
  void add_inbox_source(std::string name, inbox_source source);
  const std::map<std::string, inbox_source>& inbox_sources() const noexcept { return inboxes_; }

  // Registers the application's own migrations, applied by migrate() (and the `migrate` verb).
  // The span must outlive the app (a constexpr array, typically).
  void add_migrations(std::string component, std::span<const migration> steps);
  // The components of those migrations, in the order they were registered.
  std::vector<std::string> migration_components() const;
  // Applies every registered migration, then creates the registered projections' views, then
  // checks the reads() declarations (throws error_exception, errc::validation, naming an unknown
  // query or projection and the known ones).
  void migrate();

  // Adds (or replaces) a verb; `usage` is its entry in the verbs list. The built-in verbs (and
  // `serve`) parse their arguments with CLI11 and answer `VERB --help` with their help.
  void add_verb(std::string name, std::string usage, verb run);
  // Runs the verb named by argv[1]; `help` (exit code 0), no verb or an unknown one (2, on
  // stderr) lists them. Errors go to stderr, results to stdout.
  int main(int argc, char** argv);

 private:
  app_config config_;
  std::unique_ptr<cleave::store> store_;
  cleave::upcasters upcasters_;  // before the projector, which reads through it
  std::unique_ptr<cleave::projector> projector_;
  std::unique_ptr<cleave::group_commit> grouped_;  // when config_.group_commit
  command_bus commands_;
  query_bus queries_;
  std::unique_ptr<cleave::scheduler> scheduler_;  // sends through commands_
  read_your_writes* consistency_ = nullptr;
  std::vector<std::pair<projection, cleave::store*>> pending_projections_;
  mutable std::mutex jobs_mutex_;
  std::map<std::string, rebuild_job> jobs_;
  std::map<std::string, inbox_source> inboxes_;
  std::map<std::string, std::thread> job_threads_;
  std::vector<std::pair<std::string, std::span<const migration>>> migrations_;
  struct verb_entry {
    std::string usage;
    verb run;
  };
  std::map<std::string, verb_entry> verbs_;
};

// Opens the store a configuration names (database, and replicas for PostgreSQL) through the
// backend registered for its URL (see cleave/store/backends.hpp): the program must link that
// backend (cleave::sqlite, cleave::postgres), else errc::validation says which are linked.
std::unique_ptr<store> open_store(const app_config& config);

// The read replicas and their lag, as JSON (the HTTP admin API).
json replicas_json(store& s);

// Where each of the projector's projections stands, as JSON (the `projections list` verb, the
// HTTP admin API): name, mode, checkpoint, lag_events, lag_seconds, dead_letters.
json projections_json(projector& p);
// How a rebuild went (or is going), as the CLI and the admin API show it.
json rebuild_json(const rebuild_progress& p);

// Reads a consistency as the CLI and HTTP spell it: "eventual", "strong", "bounded=<ms>" or
// "at_least=<token>", each optionally followed by ";dead_letters=accept" (answer even from views
// missing parked events); anything else is a validation error.
result<consistency> parse_consistency(std::string_view text);

// Blocks SIGINT and SIGTERM in the calling thread (call it before starting threads, which
// inherit the mask), then waits for one of them.
void block_stop_signals();
void wait_for_stop_signal();

}  // namespace cleave
