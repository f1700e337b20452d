#include <cleave/app/app.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>

#include <fmt/format.h>
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

struct config_file {
  std::optional<std::string> database, listen, log_level, static_dir;
  std::optional<std::int64_t> max_body_bytes, max_header_bytes, max_json_depth, max_connections,
      idle_timeout_seconds, workers;
  std::optional<std::map<std::string, principal_entry>> tokens;
  std::optional<std::map<std::string, std::string>> roles;
};
CLEAVE_RECORD(config_file, database, listen, log_level, static_dir, max_body_bytes,
              max_header_bytes, max_json_depth, max_connections, idle_timeout_seconds, workers,
              tokens, roles)

void print_json(const json& j) {
  std::cout << j.dump(2) << std::endl;
}

int report(const error& e) {
  std::cerr << "error: " << e.describe() << std::endl;
  return e.category == errc::validation || e.category == errc::not_found ? 2 : 1;
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
                   positive(f.workers, c.workers, "workers")})
      if (!r) return std::unexpected(r.error());
    if (f.idle_timeout_seconds) {
      if (*f.idle_timeout_seconds <= 0) return invalid("idle_timeout_seconds", "must be positive");
      c.idle_timeout = std::chrono::seconds(*f.idle_timeout_seconds);
    }
    if (f.tokens)
      for (const auto& [token, who] : *f.tokens)
        c.tokens[token] = principal{who.subject, who.roles};
    if (f.roles) c.roles = *f.roles;
  }
  if (const char* v = std::getenv("CLEAVE_DATABASE"); v && *v) c.database = v;
  if (const char* v = std::getenv("CLEAVE_LISTEN"); v && *v) c.listen = v;
  if (const char* v = std::getenv("CLEAVE_LOG_LEVEL"); v && *v) c.log_level = v;
  return c;
}

std::unique_ptr<store> open_store(const std::string& database) {
  if (database.starts_with("postgresql://") || database.starts_with("postgres://"))
    return std::make_unique<postgres::store>(postgres::options{.url = database});
  return std::make_unique<sqlite::store>(sqlite::options{.path = database});
}

app::app(app_config config)
    : config_(std::move(config)),
      store_(open_store(config_.database)),
      commands_(store_.get()),
      queries_(store_.get()) {
  spdlog::set_level(spdlog::level::from_str(config_.log_level));
  add_verb("send", "send NAME JSON      run a command through this application's handlers",
           [](app& a, std::span<const std::string> args) {
             if (args.size() != 2) return report({errc::validation, "usage: send NAME JSON", {}});
             auto body = parse_json(args[1]);
             if (!body) return report(body.error());
             auto r = a.commands().send_json(args[0], *body);
             if (!r) return report(r.error());
             print_json({{"result", r->result}, {"position", r->position.to_string()}});
             return 0;
           });
  add_verb("ask", "ask NAME JSON       run a query through this application's handlers",
           [](app& a, std::span<const std::string> args) {
             if (args.size() != 2) return report({errc::validation, "usage: ask NAME JSON", {}});
             auto body = parse_json(args[1]);
             if (!body) return report(body.error());
             auto r = a.queries().ask_json(args[0], *body);
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
                                   {"payload", e.payload},
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
                         {"queries", queries}});
             return 0;
           });
  add_verb("migrate", "migrate             apply the application's migrations",
           [](app& a, std::span<const std::string>) {
             a.migrate();
             std::cout << "migrated" << std::endl;
             return 0;
           });
}

app::~app() = default;

void app::add_migrations(std::string component, std::span<const migration> steps) {
  migrations_.emplace_back(std::move(component), steps);
}

void app::migrate() {
  for (const auto& [component, steps] : migrations_) store_->migrate(component, steps);
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
