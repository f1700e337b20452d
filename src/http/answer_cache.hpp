#pragma once
// The answers an I/O thread keeps for queries that cache their answers (`cache_answers`, see
// cleave/core/detail/bus_core.hpp): the bytes of a 200 to a plain GET, kept under its target and
// Authorization header together with the store's data_version it was read at, and given again —
// with the request's own correlation id — while the data_version is unchanged. One per I/O
// thread, used only there: no lock.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include <cleave/store/store.hpp>

#include "router.hpp"

namespace cleave::http::detail {

struct cached_answer {
  std::string query;     // its wire name, for the metrics
  std::string head;      // the status line and headers, through "X-Correlation-Id: "
  std::string tail;      // the end of that line, Content-Length, the blank line and the body
  data_version read_at;  // the data it was read from
};

class answer_cache {
 public:
  static constexpr std::size_t most_answers = 1024;
  static constexpr std::size_t most_bytes = std::size_t{8} << 20;  // of kept answers and their keys
  static constexpr std::size_t largest_body = std::size_t{64} * 1024;

  // The answer kept for a GET of `target` with this Authorization header, when it was read at
  // `now`; else null.
  std::shared_ptr<const cached_answer> find(std::string_view target, std::string_view authorization,
                                            const data_version& now);
  // Keeps `answer` (a 200 to a GET of query `query` at `target`, read at `read_at`), unless its
  // body is over largest_body. Within most_answers and most_bytes: answers of data older than
  // `now` make room first, then any others.
  void keep(std::string_view target, std::string_view authorization, std::string_view query,
            const response& answer, const data_version& read_at, const data_version& now);
  std::size_t size() const noexcept { return answers_.size(); }

 private:
  const std::string& key_of(std::string_view target, std::string_view authorization);

  static std::size_t bytes_of(const std::string& key, const cached_answer& a) noexcept {
    return key.size() + a.query.size() + a.head.size() + a.tail.size();
  }
  // Takes out the answer under `key`, if any.
  void drop(const std::string& key);
  bool full(std::size_t adding) const noexcept {
    return answers_.size() >= most_answers || bytes_ + adding > most_bytes;
  }

  std::unordered_map<std::string, std::shared_ptr<const cached_answer>> answers_;
  std::size_t bytes_ = 0;  // bytes_of() of every kept answer
  std::string key_;        // reused: a lookup allocates nothing
};

}  // namespace cleave::http::detail
