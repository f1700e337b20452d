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
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/core/bus.hpp>
#include <cleave/core/error.hpp>
#include <cleave/store/store.hpp>

namespace cleave {

struct app_config {
  // A SQLite file (created with its folder), ":memory:", or a postgresql:// URL.
  std::string database = "var/app.db";
  std::string listen = "127.0.0.1:8080";
  std::size_t max_body_bytes = 1 << 20;
  std::size_t max_header_bytes = 16 << 10;
  int max_json_depth = 64;
  std::size_t max_connections = 1024;
  std::chrono::seconds idle_timeout{30};
  std::size_t workers = 4;  // threads that run handlers (database work), apart from I/O
  // Bearer tokens and who they stand for; empty means no authentication.
  std::map<std::string, principal> tokens;
  // The role a command or query requires, by wire name (only with tokens).
  std::map<std::string, std::string> roles;
  std::string log_level = "info";
  std::filesystem::path static_dir;  // files served at / (a web UI); empty for none
};

// Reads a configuration: defaults, then the JSON file (when it exists; a missing file is fine, a
// malformed one is an error naming the member), then the environment: CLEAVE_DATABASE,
// CLEAVE_LISTEN, CLEAVE_LOG_LEVEL.
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

  // Registers the application's own migrations, applied by migrate() (and the `migrate` verb).
  // The span must outlive the app (a constexpr array, typically).
  void add_migrations(std::string component, std::span<const migration> steps);
  // Applies every registered migration.
  void migrate();

  // Adds (or replaces) a verb.
  void add_verb(std::string name, std::string usage, verb run);
  // Runs the verb named by argv[1] (`help` lists them). Errors go to stderr, results to stdout.
  int main(int argc, char** argv);

 private:
  app_config config_;
  std::unique_ptr<cleave::store> store_;
  command_bus commands_;
  query_bus queries_;
  std::vector<std::pair<std::string, std::span<const migration>>> migrations_;
  struct verb_entry {
    std::string usage;
    verb run;
  };
  std::map<std::string, verb_entry> verbs_;
};

// Opens the store a database setting names (see app_config::database).
std::unique_ptr<store> open_store(const std::string& database);

}  // namespace cleave
