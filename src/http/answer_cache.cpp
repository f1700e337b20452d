// The I/O thread's answer cache (see answer_cache.hpp).

#include "answer_cache.hpp"

#include <iterator>

#include <fmt/format.h>

namespace cleave::http::detail {

const std::string& answer_cache::key_of(std::string_view target, std::string_view authorization) {
  // A newline cannot be in a header value or a request target: the key is unambiguous.
  key_.assign(authorization);
  key_ += '\n';
  key_ += target;
  return key_;
}

std::shared_ptr<const cached_answer> answer_cache::find(std::string_view target,
                                                        std::string_view authorization,
                                                        const data_version& now) {
  const auto it = answers_.find(key_of(target, authorization));
  if (it == answers_.end() || it->second->read_at != now) return nullptr;
  return it->second;
}

void answer_cache::drop(const std::string& key) {
  if (const auto it = answers_.find(key); it != answers_.end()) {
    bytes_ -= bytes_of(it->first, *it->second);
    answers_.erase(it);
  }
}

void answer_cache::keep(std::string_view target, std::string_view authorization,
                        std::string_view query, const response& answer, const data_version& read_at,
                        const data_version& now) {
  if (answer.status != 200 || answer.body.size() > largest_body) return;
  auto kept = std::make_shared<cached_answer>();
  kept->query = query;
  kept->read_at = read_at;
  // As the server writes any answer (server.cpp, to_beast): Server, Content-Type, the router's
  // headers in order, Content-Length. The correlation id is the request's own, so it goes last.
  auto out = std::back_inserter(kept->head);
  fmt::format_to(out, "HTTP/1.1 200 OK\r\nServer: cleave\r\nContent-Type: {}\r\n",
                 answer.content_type);
  for (const auto& [name, value] : answer.headers)
    if (name != "X-Correlation-Id") fmt::format_to(out, "{}: {}\r\n", name, value);
  kept->head += "X-Correlation-Id: ";
  kept->tail = fmt::format("\r\nContent-Length: {}\r\n\r\n{}", answer.body.size(), answer.body);

  const auto& key = key_of(target, authorization);
  drop(key);
  const auto adding = bytes_of(key, *kept);
  if (full(adding))
    std::erase_if(answers_, [&](const auto& a) {
      if (a.second->read_at == now) return false;
      bytes_ -= bytes_of(a.first, *a.second);
      return true;
    });
  // Still full of answers of this data (many targets or tokens, until the next commit): one
  // of them goes, whichever the map holds first, so that a flood of targets cannot keep the
  // answers asked for most out.
  while (full(adding) && !answers_.empty()) drop(std::string(answers_.begin()->first));
  bytes_ += adding;
  answers_.emplace(key, std::move(kept));
}

}  // namespace cleave::http::detail
