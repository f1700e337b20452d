// GET /metrics (see metrics.hpp): the router's counters and histograms, and the read side's lag,
// rendered in the Prometheus text format 0.0.4.

#include "metrics.hpp"

#include <fmt/format.h>

namespace cleave::http::detail {

namespace {

// The HELP and TYPE lines that open a Prometheus metric family.
void metric_family(std::string& out, std::string_view name, std::string_view type,
                   std::string_view help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

// The value under `key` in `map`, made (zero) when new; `key` is built only then.
template <class Map, class Key, class Make>
typename Map::mapped_type& entry_of(Map& map, const Key& key, Make make) {
  auto it = map.find(key);
  if (it == map.end()) it = map.emplace(make(), typename Map::mapped_type{}).first;
  return it->second;
}

}  // namespace

void metrics::count_request(std::string_view route, int status, double seconds) {
  ++entry_of(requests_, std::tuple{route, status}, [&] {
    return std::tuple{std::string(route), status};
  });
  auto& h = entry_of(latency_, route, [&] { return std::string(route); });
  for (std::size_t i = 0; i < std::size(buckets); ++i)
    if (seconds <= buckets[i]) ++h.counts[i];
  ++h.count;
  h.sum += seconds;
}

void metrics::count_message(std::string_view kind, std::string_view name,
                            std::string_view outcome) {
  ++entry_of(messages_, std::tuple{kind, name, outcome}, [&] {
    return std::tuple{std::string(kind), std::string(name), std::string(outcome)};
  });
}

void metrics::record_request(const std::string& route, int status, std::chrono::nanoseconds took) {
  const double seconds = std::chrono::duration<double>(took).count();
  std::lock_guard lock(mutex_);
  count_request(route, status, seconds);
}

void metrics::record_message(std::string_view kind, std::string_view name,
                             std::string_view outcome) {
  std::lock_guard lock(mutex_);
  count_message(kind, name, outcome);
}

void metrics::record_cached_answer(std::string_view query, std::chrono::nanoseconds took) {
  const double seconds = std::chrono::duration<double>(took).count();
  std::lock_guard lock(mutex_);
  count_request("/queries/{name}", 200, seconds);
  count_message("query", query, "ok");
  ++entry_of(cached_, query, [&] { return std::string(query); });
}

std::string metrics::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  metric_family(out, "cleave_http_requests_total", "counter", "HTTP requests by route and status.");
  for (const auto& [key, n] : requests_)
    out += fmt::format("cleave_http_requests_total{{route=\"{}\",status=\"{}\"}} {}\n",
                       std::get<0>(key), std::get<1>(key), n);
  metric_family(out, "cleave_http_request_duration_seconds", "histogram",
                "HTTP request latency by route.");
  for (const auto& [route, h] : latency_) {
    for (std::size_t i = 0; i < std::size(buckets); ++i)
      out +=
          fmt::format("cleave_http_request_duration_seconds_bucket{{route=\"{}\",le=\"{}\"}} {}\n",
                      route, buckets[i], h.counts[i]);
    out +=
        fmt::format("cleave_http_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {}\n",
                    route, h.count);
    out +=
        fmt::format("cleave_http_request_duration_seconds_sum{{route=\"{}\"}} {}\n", route, h.sum);
    out += fmt::format("cleave_http_request_duration_seconds_count{{route=\"{}\"}} {}\n", route,
                       h.count);
  }
  metric_family(out, "cleave_messages_total", "counter",
                "Commands and queries by name and outcome.");
  for (const auto& [key, n] : messages_)
    out += fmt::format("cleave_messages_total{{kind=\"{}\",name=\"{}\",outcome=\"{}\"}} {}\n",
                       std::get<0>(key), std::get<1>(key), std::get<2>(key), n);
  metric_family(out, "cleave_http_cached_answers_total", "counter",
                "Queries answered from the answer cache (counted in the totals above too).");
  for (const auto& [query, n] : cached_)
    out += fmt::format("cleave_http_cached_answers_total{{name=\"{}\"}} {}\n", query, n);
  return out;
}

std::string lag_metrics(app& a) {
  std::string out;
  const auto all = projections_json(a.projections());
  auto per_projection = [&](std::string_view name, std::string_view help, const char* field) {
    metric_family(out, name, "gauge", help);
    for (const auto& p : all) {
      const auto& v = p[field];
      out += fmt::format("{}{{projection=\"{}\"}} {}\n", name, p["name"].get<std::string>(),
                         v.is_number_float() ? fmt::format("{}", v.get<double>()) : v.dump());
    }
  };
  per_projection("cleave_projection_lag_events",
                 "Events committed that a projection has not applied.", "lag_events");
  per_projection("cleave_projection_lag_seconds",
                 "Age of the oldest event a projection has not applied.", "lag_seconds");
  per_projection("cleave_projection_dead_letters", "Events parked because their handler failed.",
                 "dead_letters");
  // Each unit of a partitioned (or shared) projection, with the process holding it.
  metric_family(out, "cleave_projection_unit_lag_events", "gauge",
                "Events committed that a unit of a projection has not applied.");
  for (const auto& p : all)
    if (p.contains("units"))
      for (const auto& u : p["units"])
        out += fmt::format(
            "cleave_projection_unit_lag_events{{projection=\"{}\",unit=\"{}\",owner=\"{}\"}} {}\n",
            p["name"].get<std::string>(), u["name"].get<std::string>(),
            u["owner"].get<std::string>(), u["lag_events"].dump());
  const auto replicas = a.store().replicas();
  if (replicas.empty()) return out;
  // A replica that is down has no lag to show: its lag lines are left out, not made up.
  auto per_replica = [&](std::string_view name, std::string_view help, auto value, bool when_down) {
    metric_family(out, name, "gauge", help);
    for (const auto& r : replicas)
      if (r.up || when_down) out += fmt::format("{}{{replica=\"{}\"}} {}\n", name, r.url, value(r));
  };
  per_replica(
      "cleave_replica_up", "Whether a replica answers (1) or is set aside as down (0).",
      [](const replica_status& r) { return r.up ? 1 : 0; }, true);
  per_replica(
      "cleave_replica_lag_seconds",
      "How long ago the primary wrote the oldest WAL a replica lacks.",
      [](const replica_status& r) { return r.lag_seconds; }, false);
  per_replica(
      "cleave_replica_lag_bytes", "WAL the primary has written that a replica has not replayed.",
      [](const replica_status& r) { return r.lag_bytes; }, false);
  return out;
}

}  // namespace cleave::http::detail
