// The registry of backends by URL scheme (see backends.hpp).

#include <cleave/store/backends.hpp>

#include <map>
#include <mutex>

#include <fmt/format.h>

namespace cleave {

namespace {

struct registry {
  std::mutex mutex;
  std::map<std::string, store_opener, std::less<>> by_scheme;
  store_opener plain = nullptr;
};

registry& backends() {
  static registry r;  // made on first use: registrations run during static initialization
  return r;
}

// "postgresql" for "postgresql://h/db"; empty for a path ("var/app.db", "C:\x" is not ours).
std::string_view scheme_of(std::string_view url) {
  const auto colon = url.find(':');
  if (colon == std::string_view::npos || colon < 2) return {};
  const auto scheme = url.substr(0, colon);
  for (char c : scheme)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'))
      return {};
  return scheme;
}

}  // namespace

bool register_backend(std::string_view scheme, store_opener open, bool plain_paths) {
  auto& r = backends();
  std::lock_guard lock(r.mutex);
  r.by_scheme.insert_or_assign(std::string(scheme), open);
  if (plain_paths) r.plain = open;
  return true;
}

std::unique_ptr<store> open_store(const store_settings& settings) {
  auto& r = backends();
  store_opener open = nullptr;
  const auto scheme = settings.url == ":memory:" ? std::string_view{} : scheme_of(settings.url);
  std::string known;
  {
    std::lock_guard lock(r.mutex);
    if (scheme.empty()) {
      open = r.plain;
    } else if (auto it = r.by_scheme.find(scheme); it != r.by_scheme.end()) {
      open = it->second;
    }
    for (const auto& [name, _] : r.by_scheme)
      known += fmt::format("{}{}:", known.empty() ? "" : ", ", name);
  }
  if (!open)
    throw error_exception(
        {errc::validation,
         scheme.empty()
             ? fmt::format("the database '{}' is a path, and no backend for paths is linked into "
                           "this program (link cleave::sqlite); linked: {}",
                           settings.url, known.empty() ? "none" : known)
             : fmt::format("no backend for '{}:' URLs is linked into this program; linked: {}",
                           scheme, known.empty() ? "none" : known),
         {}});
  return open(settings);
}

}  // namespace cleave
