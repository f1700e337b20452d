#pragma once
// Opening a store by its URL. Each backend library registers the schemes it serves when it is
// linked in (cleave::sqlite: `sqlite:` and plain paths; cleave::postgres: `postgresql://` and
// `postgres://`), so an application (cleave::app) links only the backends it names in CMake, and
// a new backend is one folder that registers itself.

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/store/store.hpp>

namespace cleave {

// What an application asks of the store it opens.
struct store_settings {
  // "sqlite:var/app.db", a plain path or ":memory:" (SQLite), "postgresql://…".
  std::string url;
  // Read replicas (hot standbys) that serve queries, where the backend has them, and how far
  // one may lag before reads leave it.
  std::vector<std::string> replicas;
  std::chrono::milliseconds replica_max_lag{5000};
};

// Opens a store for settings whose URL has a registered scheme; throws error_exception.
using store_opener = std::unique_ptr<store> (*)(const store_settings& settings);

// Registers `open` for URLs that begin with `scheme` followed by ':' ("sqlite"), and, with
// `plain_paths`, for URLs without a scheme. Called by a backend at static initialization;
// returns true (for a namespace-scope `const bool`).
bool register_backend(std::string_view scheme, store_opener open, bool plain_paths = false);

// Opens the store `settings.url` names. A scheme no linked backend serves is errc::validation,
// naming the schemes that are (a backend not linked into the program is not there).
std::unique_ptr<store> open_store(const store_settings& settings);

}  // namespace cleave
