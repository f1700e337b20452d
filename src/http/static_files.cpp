#include "router.hpp"

#include <algorithm>
#include <system_error>

namespace cleave::http::detail {

namespace {

namespace fs = std::filesystem;

// True when `inner` is `root` or below it; both canonical.
bool contains(const fs::path& root, const fs::path& inner) {
  const auto [r, i] = std::mismatch(root.begin(), root.end(), inner.begin(), inner.end());
  return r == root.end();
}

// The canonical form of `p` when it exists inside `root` (canonical) and is a regular file or a
// directory.
std::optional<fs::path> existing_inside(const fs::path& root, const fs::path& p) {
  std::error_code ec;
  auto real = fs::canonical(p, ec);
  if (ec || !contains(root, real)) return std::nullopt;
  const auto status = fs::status(real, ec);
  if (ec || (!fs::is_regular_file(status) && !fs::is_directory(status))) return std::nullopt;
  return real;
}

}  // namespace

std::optional<fs::path> resolve_static(const fs::path& root, std::string_view path) {
  if (root.empty() || !path.starts_with('/')) return std::nullopt;
  auto decoded = percent_decode(path, false);
  if (!decoded) return std::nullopt;
  std::string_view rest = *decoded;
  rest.remove_prefix(1);
  // Checked segment by segment after decoding, so that no spelling of `..`, `/` or `\` gets
  // through; canonicalizing below then also catches symlinks that lead out.
  fs::path relative;
  while (!rest.empty()) {
    const auto slash = rest.find('/');
    const auto segment = rest.substr(0, slash);
    // Dot-files (.git, .env, and `.`/`..` themselves) are never served; only .well-known is.
    if (segment.empty() || (segment.starts_with('.') && segment != ".well-known") ||
        segment.find_first_of(std::string_view("\\\0", 2)) != std::string_view::npos)
      return std::nullopt;
    relative /= segment;
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);  // a trailing slash leaves `rest` empty: a directory
  }
  std::error_code ec;
  const auto real_root = fs::canonical(root, ec);
  if (ec) return std::nullopt;
  auto found = existing_inside(real_root, real_root / relative);
  if (found && fs::is_directory(*found, ec))
    found = existing_inside(real_root, *found / "index.html");
  if (!found || !fs::is_regular_file(*found, ec)) return std::nullopt;
  return found;
}

std::string_view media_type_of(const fs::path& file) {
  const auto ext = file.extension().string();
  if (ext == ".html") return "text/html; charset=utf-8";
  if (ext == ".js") return "text/javascript; charset=utf-8";
  if (ext == ".css") return "text/css; charset=utf-8";
  if (ext == ".json") return "application/json";
  if (ext == ".svg") return "image/svg+xml";
  if (ext == ".png") return "image/png";
  if (ext == ".txt") return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

}  // namespace cleave::http::detail
