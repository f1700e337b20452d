// cleave_bench_dispatch: the cost of the buses against a direct call of the same handler.
// Each benchmark reports `allocs_per_op` (global operator new calls per iteration). After the run,
// a summary of each case's time as a ratio of BM_direct_call goes to stderr.

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <new>
#include <string>
#include <utility>

#include <benchmark/benchmark.h>

#include <cleave/cleave.hpp>

#include "dispatch_benchmark_types.hpp"

namespace {
std::atomic<std::uint64_t> allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}

namespace bench {

struct deposit {
  std::string account;
  std::int64_t amount = 0;
  using response = std::int64_t;
};
CLEAVE_COMMAND(deposit, "bench.deposit", account, amount)

struct balance {
  std::string account;
  using response = std::int64_t;
};
CLEAVE_QUERY(balance, "bench.balance", account)

}  // namespace bench

namespace {

std::int64_t total = 0;

[[gnu::noinline]] cleave::result<std::int64_t> deposit_handler(const bench::deposit& d,
                                                               cleave::write_context&) {
  total += d.amount;
  return total;
}

[[gnu::noinline]] cleave::result<std::int64_t> balance_handler(const bench::balance&,
                                                               const cleave::read_context&) {
  return total;
}

class pass_through final : public cleave::behavior {
 public:
  static constexpr cleave::applies_to scope = cleave::applies_to::both;
  cleave::result<void> handle(const cleave::message_ref&, const cleave::request_meta&,
                              cleave::next_step next) override {
    return next();
  }
};

// Runs `op` in the benchmark loop and reports allocations per iteration.
template <class Op>
void measure(benchmark::State& state, Op&& op) {
  const auto before = allocations.load();
  for (auto _ : state) benchmark::DoNotOptimize(op());
  state.counters["allocs_per_op"] = benchmark::Counter(
      static_cast<double>(allocations.load() - before) / static_cast<double>(state.iterations()));
}

void BM_direct_call(benchmark::State& state) {
  const bench::deposit d{"acc", 1};
  cleave::request_meta meta;
  cleave::write_context ctx(nullptr, meta);
  measure(state, [&] { return deposit_handler(d, ctx); });
}
BENCHMARK(BM_direct_call);

void BM_command_send(benchmark::State& state) {
  cleave::command_bus commands;
  commands.add(deposit_handler);
  const bench::deposit d{"acc", 1};
  measure(state, [&] { return commands.send(d); });
}
BENCHMARK(BM_command_send);

void BM_query_ask(benchmark::State& state) {
  cleave::query_bus queries;
  queries.add(balance_handler);
  const bench::balance q{"acc"};
  measure(state, [&] { return queries.ask(q); });
}
BENCHMARK(BM_query_ask);

// With BM_command_send_3_behaviors: the cost of one behavior is half the difference (both pay
// the pipeline's way to the handler, which a bus without behaviors skips).
void BM_command_send_1_behavior(benchmark::State& state) {
  cleave::command_bus commands;
  commands.use<pass_through>();
  commands.add(deposit_handler);
  const bench::deposit d{"acc", 1};
  measure(state, [&] { return commands.send(d); });
}
BENCHMARK(BM_command_send_1_behavior);

void BM_command_send_3_behaviors(benchmark::State& state) {
  cleave::command_bus commands;
  commands.use<pass_through>();
  commands.use<pass_through>();
  commands.use<pass_through>();
  commands.add(deposit_handler);
  const bench::deposit d{"acc", 1};
  measure(state, [&] { return commands.send(d); });
}
BENCHMARK(BM_command_send_3_behaviors);

void BM_command_send_1000_types(benchmark::State& state) {
  cleave::command_bus commands;
  bench::add_999_command_types(commands);
  commands.add(deposit_handler);  // the 1,000th type, registered last
  const bench::deposit d{"acc", 1};
  measure(state, [&] { return commands.send(d); });
}
BENCHMARK(BM_command_send_1000_types);

void BM_command_send_by_name_json(benchmark::State& state) {
  cleave::command_bus commands;
  commands.add(deposit_handler);
  const std::string body = R"({"account":"acc","amount":1})";
  measure(state, [&] {
    auto j = cleave::parse_json(body);
    return commands.send_json("bench.deposit", *j);
  });
}
BENCHMARK(BM_command_send_by_name_json);

// Passes everything to the display reporter and keeps each case's time for the summary.
class ratio_reporter final : public benchmark::BenchmarkReporter {
 public:
  explicit ratio_reporter(benchmark::BenchmarkReporter* display) : display_(display) {}
  bool ReportContext(const Context& context) override { return display_->ReportContext(context); }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs)
      if (run.run_type == Run::RT_Iteration) ns_[run.benchmark_name()] = run.GetAdjustedRealTime();
    display_->ReportRuns(runs);
  }
  void Finalize() override {
    display_->Finalize();
    auto base = ns_.find("BM_direct_call");
    if (base == ns_.end()) return;
    std::fprintf(stderr, "\nagainst BM_direct_call (%.2f ns):\n", base->second);
    for (const auto& [name, ns] : ns_)
      std::fprintf(stderr, "  %-32s %8.2f ns  %6.2fx  %+7.2f ns\n", name.c_str(), ns,
                   ns / base->second, ns - base->second);
  }

 private:
  benchmark::BenchmarkReporter* display_;
  std::map<std::string, double> ns_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::unique_ptr<benchmark::BenchmarkReporter> display(benchmark::CreateDefaultDisplayReporter());
  ratio_reporter reporter(display.get());
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
}
