#pragma once
// The query behavior that makes `at_least(token)` real: before a query runs, it waits until
// every projection the query reads has reached the token, woken by the projector as batches
// commit (no polling), bounded by the request's deadline (or a default budget). When the views
// cannot get there in time, the query fails with errc::unavailable saying how far behind they
// are — never stale data presented as fresh. Nor does a view with parked events (dead letters) the
// read would have to include answer it (see cleave::consistency).
//
//   projector.add(order_views);
//   queries.use<cleave::read_your_writes>(projector)
//          .reads("shop.order_summary", {"order_summaries"});

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <cleave/core/behavior.hpp>
#include <cleave/core/bus.hpp>
#include <cleave/read/projector.hpp>

namespace cleave {

class read_your_writes final : public behavior {
 public:
  static constexpr applies_to scope = applies_to::queries;

  // `p` is not owned and must outlive the behavior.
  explicit read_your_writes(projector& p,
                            std::chrono::milliseconds budget = std::chrono::seconds(5))
      : projector_(p), budget_(budget) {}

  // Declares that query `wire_name` reads these projections' views. A query with none reads
  // the write tables, which every acknowledged command has already reached.
  read_your_writes& reads(std::string wire_name, std::vector<std::string> projections) {
    reads_[std::move(wire_name)] = std::move(projections);
    return *this;
  }

  // The projections query `wire_name` was declared to read (empty: none, the write tables).
  std::vector<std::string> reads_of(std::string_view wire_name) const {
    const auto it = reads_.find(wire_name);
    return it == reads_.end() ? std::vector<std::string>{} : it->second;
  }
  // Checks the declarations made with reads(): every query must have a handler on `queries` and
  // every projection must be registered on the projector. The error names each unknown name and
  // the known ones (a misspelt name would otherwise make reads quietly not wait). Call it once
  // every handler and projection is registered (cleave::app does, in migrate()).
  [[nodiscard]] result<void> check(const query_bus& queries) const;

  result<void> handle(const message_ref& message, const request_meta& meta,
                      next_step next) override;

  // The position an answer to query `wire_name` given just now reflects at most: the lowest
  // checkpoint of the views it reads (declared with reads()), or the log's head for a query of
  // the write tables. A client that sends it back as at_least(token) reads nothing older than
  // what it saw. Reads it now (a round trip to the primary on PostgreSQL).
  position_token position_of(std::string_view wire_name) const;
  // The same for an answer read in `tx`: for a query of the write tables, the head as `tx` sees
  // it (store::head_in), so that it names no write the answer misses. Empty when it cannot be
  // told inside `tx` (a query of views; a backend without head_in): the caller then asks
  // position_of() once `tx` has ended. Opens no other transaction (on ":memory:" that would wait
  // for the one `tx` holds). (Set as the query bus's answer_positions by cleave::app.)
  position_token position_in(std::string_view wire_name, read_session& tx) const;

  // For a transport that must not hold a thread while a read waits (the HTTP server): what
  // park() did with a query.
  struct parking {
    enum class outcome {
      not_needed,  // the query waits for nothing: ask now
      parked,      // ask (with `deadline`) once `ready` is called
      full,        // too many waits are parked: refuse it (503)
    } state = outcome::not_needed;
    clock::time_point deadline = clock::time_point::max();  // put it in the query's meta
  };
  // When query `wire_name` with consistency `wanted` would wait for views, parks the wait on the
  // projector (see projector::park): `ready` is called once, from another thread, when the views
  // are there, the token turns out never issued, or the deadline (now + the budget) passes.
  // The query is then asked with that deadline, and this behavior answers at once: the result,
  // a validation error for a token never issued, or `unavailable`. At most `limit` parked.
  parking park(std::string_view wire_name, const consistency& wanted, std::function<void()> ready,
               std::size_t limit);

 private:
  // Runs the rest of the pipeline with the read sent where the views it waited for are current.
  result<void> read_views_now(const request_meta& meta, next_step next);
  // errc::unavailable when `view` has parked events before `before` (any, if empty) and the
  // caller does not accept them.
  result<void> refuse_parked(const std::string& view, position_token before,
                             const consistency& wanted) const;

  projector& projector_;
  std::chrono::milliseconds budget_;
  std::map<std::string, std::vector<std::string>, std::less<>> reads_;
};

}  // namespace cleave
