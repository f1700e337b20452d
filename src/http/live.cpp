// The live hub (see live.hpp).

#include "live.hpp"

#include <algorithm>

#include <fmt/format.h>

#include <spdlog/spdlog.h>
#include <cleave/core/detail/string_hash.hpp>

namespace cleave::http::detail {

void live_subscriber::deliver(std::string event) {
  {
    std::lock_guard lock(mutex);
    pending = std::move(event);
  }
  poke();
}

void live_subscriber::poke() {
  poked = true;
  wake();
}

std::optional<std::string> live_subscriber::take() {
  std::lock_guard lock(mutex);
  return std::exchange(pending, std::nullopt);
}

std::string sse_event(std::string_view id, std::string_view type, std::string_view data) {
  return fmt::format("id: {}\nevent: {}\ndata: {}\n\n", id, type, data);
}

live_hub::live_hub(app& a, router& r, std::chrono::milliseconds tick)
    : app_(a), router_(r), tick_(tick), thread_([this] { run(); }) {}

live_hub::~live_hub() {
  stop();
}

void live_hub::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
  std::vector<std::shared_ptr<live_subscriber>> all;
  {
    std::lock_guard lock(mutex_);
    for (const auto& w : log_watchers_)
      if (auto s = w.lock()) all.push_back(std::move(s));
    for (const auto& [key, g] : groups_)
      for (const auto& w : g.subscribers)
        if (auto s = w.lock()) all.push_back(std::move(s));
  }
  for (auto& s : all) s->poke();
}

bool live_hub::reserve() {
  auto n = open_.load();
  do {
    if (n >= app_.config().max_live_streams) return false;
  } while (!open_.compare_exchange_weak(n, n + 1));
  return true;
}

void live_hub::release() {
  --open_;
}

namespace {
// Streams asking the same thing share one run of the query: same target, same credentials.
std::string key_of(const request& r) {
  return r.target + '\n' + r.authorization;
}
}  // namespace

std::string result_of(const std::string& body) {
  const auto parsed = json::parse(body, nullptr, false);
  return parsed.is_discarded() ? body : parsed.value("result", json()).dump();
}

namespace {
std::string hash_of(std::string_view result) {
  return fmt::format("{:016x}", cleave::detail::stable_hash(result));
}
}  // namespace

std::string live_event_id(std::string_view position, std::string_view result) {
  return fmt::format("{}/{}", position, hash_of(result));
}

bool names_result(std::string_view last_event_id, std::string_view result) {
  const auto slash = last_event_id.rfind('/');
  return slash != std::string_view::npos && last_event_id.substr(slash + 1) == hash_of(result);
}

void live_hub::watch_query(const request& query, std::string name, std::string position,
                           std::string body, const std::shared_ptr<live_subscriber>& s) {
  std::optional<std::string> newer;
  {
    std::lock_guard lock(mutex_);
    auto [it, made] = groups_.try_emplace(key_of(query));
    auto& g = it->second;
    if (made) {
      g.query = query;
      g.name = std::move(name);
      g.position = std::move(position);
      g.result = result_of(body);
      g.body = std::move(body);
    } else if (g.position != position && g.result != result_of(body)) {
      newer = sse_event(live_event_id(g.position, g.result), "result", g.body);
    }
    g.subscribers.push_back(s);
  }
  wake_.notify_all();
  if (newer) s->deliver(std::move(*newer));
}

void live_hub::watch_log(const std::shared_ptr<live_subscriber>& s) {
  {
    std::lock_guard lock(mutex_);
    log_watchers_.push_back(s);
  }
  wake_.notify_all();
}

void live_hub::forget(const std::shared_ptr<live_subscriber>& s) {
  std::lock_guard lock(mutex_);
  const auto same = [&](const std::weak_ptr<live_subscriber>& w) {
    auto p = w.lock();
    return !p || p == s;
  };
  std::erase_if(log_watchers_, same);
  for (auto it = groups_.begin(); it != groups_.end();) {
    std::erase_if(it->second.subscribers, same);
    it = it->second.subscribers.empty() ? groups_.erase(it) : std::next(it);
  }
}

void live_hub::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    // Idle (nobody subscribed) until a stream subscribes; then a look every tick.
    wake_.wait(lock, [&] { return stopping_ || !groups_.empty() || !log_watchers_.empty(); });
    wake_.wait_for(lock, tick_, [&] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    try {
      look();
    } catch (const std::exception& e) {
      spdlog::warn("live streams: {}", e.what());
    }
    lock.lock();
  }
}

void live_hub::look() {
  std::vector<std::shared_ptr<live_subscriber>> to_wake;
  std::vector<std::pair<std::string, request>> queries;  // key, request
  const auto now = clock::now();
  {
    std::lock_guard lock(mutex_);
    for (const auto& w : log_watchers_)
      if (auto s = w.lock()) to_wake.push_back(std::move(s));
    for (const auto& [key, g] : groups_)
      if (g.retry_at <= now) queries.emplace_back(key, g.query);
  }
  if (!to_wake.empty()) {
    // What a gap-safe reader can reach: on PostgreSQL a commit below a running transaction moves
    // it when that transaction ends, not the head.
    const auto head = app_.store().readable_head();
    if (head != head_) {
      head_ = head;
      for (auto& s : to_wake) s->poke();
    }
  }
  // Each query's views are read once per tick; a query whose views moved runs again.
  std::map<std::string, std::string, std::less<>> positions;
  for (auto& [key, query] : queries) {
    std::string name, last;
    {
      std::lock_guard lock(mutex_);
      auto it = groups_.find(key);
      if (it == groups_.end()) continue;
      name = it->second.name;
      last = it->second.position;
    }
    auto at = positions.find(name);
    if (at == positions.end())
      at = positions.emplace(name, app_.read_consistency().position_of(name).to_string()).first;
    // (Read before the query runs: a batch that commits meanwhile is seen next time.)
    const std::string& position = at->second;
    if (position == last) continue;
    query.received = clock::now();
    const auto answer = router_.handle(query);
    std::vector<std::shared_ptr<live_subscriber>> subscribers;
    {
      std::lock_guard lock(mutex_);
      auto it = groups_.find(key);
      if (it == groups_.end()) continue;
      auto& g = it->second;
      if (answer.status != 200) {  // tried again in a second
        g.retry_at = clock::now() + std::chrono::seconds(1);
        continue;
      }
      // Sent when the result changed, not when only the views moved under it.
      auto result = result_of(answer.body);
      g.position = position;
      if (result == g.result) continue;
      g.result = std::move(result);
      g.body = answer.body;
      for (const auto& w : g.subscribers)
        if (auto s = w.lock()) subscribers.push_back(std::move(s));
    }
    const auto event =
        sse_event(live_event_id(position, result_of(answer.body)), "result", answer.body);
    for (auto& s : subscribers) s->deliver(event);
  }
}

}  // namespace cleave::http::detail
