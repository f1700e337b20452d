#pragma once
// The verbs every cleave application's executable offers — send, ask, events, status, project,
// projections, migrate — one function each (app::verb), registered by app's constructor; and
// what they share with other modules' verbs (`serve`): parsing a verb's arguments with CLI11
// (`VERB --help` prints its help) and reporting an error with its exit code. Internal to cleave.

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <cleave/app/app.hpp>

namespace CLI {
class App;  // <CLI/CLI.hpp>, included where a verb is parsed
}

namespace cleave::verbs {

int send(app& a, std::span<const std::string> args);
int load(app& a, std::span<const std::string> args);
int ask(app& a, std::span<const std::string> args);
int events(app& a, std::span<const std::string> args);
int status(app& a, std::span<const std::string> args);
int project(app& a, std::span<const std::string> args);
int projections(app& a, std::span<const std::string> args);
int migrate(app& a, std::span<const std::string> args);

// Adds the verbs above to `a`.
void add_builtin(app& a);

// Writes "error: <category>: <message>" on stderr; returns the exit code: 2 for what the caller
// can fix (validation, not found, an idempotency key reused), else 1.
int report(const error& e);

// Parses a verb's arguments with `cli`. Nothing when the verb should go on; else the exit code to
// return at once: 0 after --help (the help is on stdout), 2 after arguments `cli` does not take
// (reported as "usage: <synopsis>").
std::optional<int> parse(CLI::App& cli, std::span<const std::string> args,
                         std::string_view synopsis);

}  // namespace cleave::verbs
