// Registers the SQLite backend for `sqlite:` URLs and plain paths (see cleave/store/backends.hpp).
// The library's link options name `cleave_sqlite_backend`, so a program that links cleave::sqlite
// keeps this file (and its registration) even when nothing else refers to it.

#include <cleave/sqlite/store.hpp>
#include <cleave/store/backends.hpp>

namespace {

std::unique_ptr<cleave::store> open_sqlite(const cleave::store_settings& settings) {
  if (!settings.replicas.empty())
    throw cleave::error_exception(
        {cleave::errc::validation,
         "replicas are PostgreSQL hot standbys: the database must be one too",
         {}});
  std::string_view path = settings.url;
  if (path.starts_with("sqlite:")) path.remove_prefix(7);
  return std::make_unique<cleave::sqlite::store>(
      cleave::sqlite::options{.path = std::string(path)});
}

}  // namespace

extern "C" {
extern const bool cleave_sqlite_backend;
const bool cleave_sqlite_backend = cleave::register_backend("sqlite", &open_sqlite, true);
}
