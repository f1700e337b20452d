// The live hub (see live.hpp).

#include "live.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

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

void live_hub::watch_query(const request& query, std::string name, std::string position,
                           std::string body, const std::shared_ptr<live_subscriber>& s) {
  std::lock_guard lock(mutex_);
  auto [it, made] = groups_.try_emplace(key_of(query));
  auto& g = it->second;
  if (made) {
    g.query = query;
    g.name = std::move(name);
    g.position = std::move(position);
    const auto parsed = json::parse(body, nullptr, false);
    g.result = parsed.is_discarded() ? body : parsed.value("result", json()).dump();
  }
  g.subscribers.push_back(s);
  wake_.notify_all();
}

void live_hub::watch_log(const std::shared_ptr<live_subscriber>& s) {
  std::lock_guard lock(mutex_);
  log_watchers_.push_back(s);
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
  {
    std::lock_guard lock(mutex_);
    for (const auto& w : log_watchers_)
      if (auto s = w.lock()) to_wake.push_back(std::move(s));
    for (const auto& [key, g] : groups_) queries.emplace_back(key, g.query);
  }
  if (!to_wake.empty()) {
    const auto head = app_.store().head();
    if (head != head_) {
      head_ = head;
      for (auto& s : to_wake) s->poke();
    }
  }
  // Each query's views are read once per tick; a query whose answer would move runs again.
  std::map<std::string, position_token, std::less<>> positions;
  for (auto& [key, query] : queries) {
    std::string name;
    std::string last;
    {
      std::lock_guard lock(mutex_);
      auto it = groups_.find(key);
      if (it == groups_.end()) continue;
      name = it->second.name;
      last = it->second.position;
    }
    auto at = positions.find(name);
    if (at == positions.end())
      at = positions.emplace(name, app_.read_consistency().position_of(name)).first;
    if (at->second.to_string() == last) continue;
    query.received = clock::now();
    const auto answer = router_.handle(query);
    if (answer.status != 200) continue;  // tried again next tick
    const auto parsed = json::parse(answer.body, nullptr, false);
    if (parsed.is_discarded()) continue;
    const auto position = parsed.value("position", std::string());
    std::vector<std::shared_ptr<live_subscriber>> subscribers;
    {
      std::lock_guard lock(mutex_);
      auto it = groups_.find(key);
      if (it == groups_.end()) continue;
      auto& g = it->second;
      // Sent when the result changed, not when only the views moved under it.
      auto result = parsed.value("result", json()).dump();
      g.position = position.empty() ? at->second.to_string() : position;
      if (result == g.result) continue;
      g.result = std::move(result);
      for (const auto& w : g.subscribers)
        if (auto s = w.lock()) subscribers.push_back(std::move(s));
    }
    const auto event = sse_event(position, "result", answer.body);
    for (auto& s : subscribers) s->deliver(event);
  }
}

}  // namespace cleave::http::detail
