// How many CPUs the server may use (router.hpp): the affinity mask and the cgroup's CPU quota,
// so that a container limited to 2 CPUs on a large host runs 2 I/O threads, not one a host CPU.

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "router.hpp"

namespace cleave::http::detail {

namespace {

std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The least quota on the way from cgroup v2 `group` (a path under /sys/fs/cgroup) up to the
// root: a parent's limit holds for its children too.
std::optional<std::size_t> quota_v2(std::filesystem::path group) {
  std::optional<std::size_t> least;
  for (;; group = group.parent_path()) {
    if (auto cpus = cpus_in_quota(read_text(group / "cpu.max")); cpus && (!least || *cpus < *least))
      least = cpus;
    if (group == group.parent_path() || group == "/sys/fs/cgroup") break;
  }
  return least;
}

// cgroup v1: the cpu controller's cfs quota and period for `group` (or at the controller's
// mount, as a container sees its own group).
std::optional<std::size_t> quota_v1(const std::string& group) {
  for (const auto& dir : {std::filesystem::path("/sys/fs/cgroup/cpu") / group.substr(1),
                          std::filesystem::path("/sys/fs/cgroup/cpu")}) {
    auto quota = read_text(dir / "cpu.cfs_quota_us"), period = read_text(dir / "cpu.cfs_period_us");
    if (quota.empty() || period.empty()) continue;
    if (auto cpus = cpus_in_quota(quota.substr(0, quota.find('\n')) + " " + period)) return cpus;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::size_t> cpus_in_quota(std::string_view cpu_max) {
  std::int64_t quota = 0, period = 0;
  const char* p = cpu_max.data();
  const char* end = p + cpu_max.size();
  auto [after_quota, e1] = std::from_chars(p, end, quota);
  if (e1 != std::errc{} || after_quota == end || *after_quota != ' ') return std::nullopt;
  auto [after_period, e2] = std::from_chars(after_quota + 1, end, period);
  if (e2 != std::errc{} || quota <= 0 || period <= 0) return std::nullopt;
  if (after_period != end && *after_period != '\n') return std::nullopt;
  return static_cast<std::size_t>((quota + period - 1) / period);
}

std::size_t usable_cpus() {
  std::size_t cpus = std::thread::hardware_concurrency();
  if (cpu_set_t set; ::sched_getaffinity(0, sizeof set, &set) == 0)
    cpus = static_cast<std::size_t>(CPU_COUNT(&set));
  std::ifstream groups("/proc/self/cgroup");  // "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
  for (std::string line; std::getline(groups, line);) {
    const auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const auto controllers = line.substr(first + 1, second - first - 1);
    const auto group = line.substr(second + 1);
    if (group.empty() || group[0] != '/') continue;
    std::optional<std::size_t> quota;
    if (line.starts_with("0::"))
      quota = quota_v2(std::filesystem::path("/sys/fs/cgroup") / group.substr(1));
    else if (("," + controllers + ",").find(",cpu,") != std::string::npos)
      quota = quota_v1(group);
    if (quota) cpus = std::min(cpus, *quota);
  }
  return std::max<std::size_t>(cpus, 1);
}

}  // namespace cleave::http::detail
