#pragma once
// What GET /metrics serves, in the Prometheus text format: request counts and latencies by
// route, commands and queries by outcome (recorded by the router), and the read side's lag
// (read from the app when rendered).

#include <chrono>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <cleave/app/app.hpp>

namespace cleave::http::detail {

// Prometheus counters and latency histograms. Thread-safe.
class metrics {
 public:
  void record_request(const std::string& route, int status, std::chrono::nanoseconds took);
  void record_message(std::string_view kind, std::string_view name, std::string_view outcome);
  // A query answered from the answer cache: a 200 on its route, an "ok" query, and one more in
  // cleave_http_cached_answers_total. Allocates only the first time for each query.
  void record_cached_answer(std::string_view query, std::chrono::nanoseconds took);
  std::string render() const;

 private:
  static constexpr double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,   0.25,   0.5,   1,    2.5};
  struct histogram {
    std::vector<std::uint64_t> counts = std::vector<std::uint64_t>(std::size(buckets), 0);
    std::uint64_t count = 0;
    double sum = 0;
  };
  // Under mutex_.
  void count_request(std::string_view route, int status, double seconds);
  void count_message(std::string_view kind, std::string_view name, std::string_view outcome);

  mutable std::mutex mutex_;
  // (std::less<>: looked up by views, built only when new.)
  std::map<std::tuple<std::string, int>, std::uint64_t, std::less<>> requests_;
  std::map<std::string, histogram, std::less<>> latency_;
  std::map<std::tuple<std::string, std::string, std::string>, std::uint64_t, std::less<>> messages_;
  std::map<std::string, std::uint64_t, std::less<>> cached_;
};

// The read side's lag as Prometheus gauges, per projection and per replica.
std::string lag_metrics(app& a);

}  // namespace cleave::http::detail
