#pragma once
// Event-sourced aggregates: the state is the fold of the aggregate's stream. Loading reads the
// stream (after a snapshot, when snapshots are on); emitting applies the event and appends it
// with the expected stream version, so a concurrent change is a conflict.
//
//   struct account {
//     std::int64_t balance = 0;
//     void apply(const opened&) {}
//     void apply(const deposited& e) { balance += e.amount; }
//   };
//   CLEAVE_RECORD(account, balance)                       // needed only for snapshots
//   const cleave::event_sourced<account, opened, deposited> accounts;
//   auto acc = accounts.load(tx, "acc-1");                // acc.state, acc.version
//   if (acc.state.balance < 0) return cleave::rejected("overdrawn");
//   acc.emit(tx, deposited{"acc-1", 5});

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include <cleave/core/context.hpp>
#include <cleave/core/error.hpp>
#include <cleave/core/json.hpp>
#include <cleave/store/upcasting.hpp>

namespace cleave {

namespace detail {
struct stream_row {
  std::string type;
  std::string payload;
  std::int64_t stream_version = 0;
};
CLEAVE_RECORD(stream_row, type, payload, stream_version)

struct snapshot_row {
  std::int64_t version = 0;
  std::int64_t shape = 0;
  std::string state;
};
CLEAVE_RECORD(snapshot_row, version, shape, state)
}  // namespace detail

// An aggregate A folded from events E...; A has an apply(const E&) for each.
template <class A, class... E>
class event_sourced {
  template <class Ev>
  static constexpr bool applies = requires(A& a, const Ev& e) { a.apply(e); };

  static_assert((event<E> && ...), "event_sourced<A, E...>: each E must be a CLEAVE_EVENT");
  static_assert((applies<E> && ...),
                "event_sourced<A, E...>: A needs `void apply(const E&)` for every E it folds");

 public:
  // A loaded aggregate: its state, its stream and the version it was loaded at.
  struct loaded {
    A state{};
    std::string stream;
    std::uint64_t version = 0;  // the stream's version: its number of events

    // Applies `e` to the state and appends it, expecting the stream to be where it was loaded.
    template <class Ev>
    void emit(write_context& tx, const Ev& e) {
      static_assert((std::is_same_v<Ev, E> || ...), "this aggregate does not fold that event type");
      state.apply(e);
      version = tx.emit(stream, e, version);
      if (owner_->snapshot_every_ > 0 && version % owner_->snapshot_every_ == 0)
        owner_->save_snapshot(tx, *this);
    }

    const event_sourced* owner_ = nullptr;
  };

  event_sourced() = default;
  // Reads events through `rewrites` (renamed or reshaped old events). Not owned.
  explicit event_sourced(const upcasters* rewrites) : rewrites_(rewrites) {}

  // Keeps a snapshot of the state every `n` events (A must be a CLEAVE_RECORD), so loading folds
  // at most n-1 events after it. 0 turns snapshots off.
  event_sourced& snapshot_every(std::uint64_t n) {
    static_assert(described<A>,
                  "snapshots store the state as JSON: declare the aggregate with "
                  "CLEAVE_RECORD(type, fields...)");
    snapshot_every_ = n;
    return *this;
  }

  // The shape of A's state that snapshots hold (0 unless declared): raise it whenever A's members
  // or its apply() change, and snapshots of another shape are ignored — the aggregate is folded
  // from its stream, and the next snapshot is of the new shape.
  event_sourced& snapshot_version(std::uint32_t v) {
    snapshot_version_ = v;
    return *this;
  }

  // Folds the stream (from its latest snapshot of this snapshot_version, when snapshots are on).
  // A stream without events loads as a new aggregate at version 0.
  loaded load(const read_context& tx, std::string_view stream) const {
    loaded out;
    out.stream = std::string(stream);
    out.owner_ = this;
    if constexpr (described<A>) {
      if (snapshot_every_ > 0) {
        if (auto snap = tx.one<detail::snapshot_row>(
                "select version, shape, state from cleave_snapshots where stream = $1 and shape = "
                "$2",
                stream, static_cast<std::int64_t>(snapshot_version_))) {
          auto parsed = parse_json(snap->state);
          auto state = parsed ? from_json<A>(*parsed, decode_mode::tolerant)
                              : result<A>(std::unexpected(parsed.error()));
          if (state) {  // a snapshot that no longer decodes is ignored: the stream is the truth
            out.state = std::move(*state);
            out.version = static_cast<std::uint64_t>(snap->version);
          }
        }
      }
    }
    for (const auto& row : tx.many<detail::stream_row>(
             "select type, cast(payload as text) as payload, stream_version from cleave_events "
             "where stream = $1 and stream <> '' and stream_version > $2 order by stream_version",
             stream, static_cast<std::int64_t>(out.version))) {
      fold(out, row);
      out.version = static_cast<std::uint64_t>(row.stream_version);
    }
    return out;
  }

 private:
  void fold(loaded& into, const detail::stream_row& row) const {
    stored_event stored;
    stored.type = row.type;
    auto payload = parse_json(row.payload);
    if (!payload) throw error_exception(payload.error());
    stored.payload = std::move(*payload);
    if (rewrites_) rewrites_->apply(stored.type, stored.payload);
    const bool applied = (try_apply<E>(into.state, stored) || ...);
    if (!applied)
      throw error_exception({errc::internal,
                             "stream '" + into.stream + "' holds a '" + stored.type +
                                 "' event, which this aggregate does not fold",
                             {}});
  }

  template <class Ev>
  static bool try_apply(A& state, const stored_event& stored) {
    if (stored.type != info_of<Ev>().wire_name) return false;
    auto e = from_json<Ev>(stored.payload, decode_mode::tolerant);
    if (!e) throw error_exception(e.error());
    state.apply(*e);
    return true;
  }

  void save_snapshot(write_context& tx, const loaded& l) const {
    if constexpr (described<A>) {
      tx.exec(
          "insert into cleave_snapshots(stream, version, shape, state) values ($1, $2, $3, $4) "
          "on conflict(stream) do update set version = excluded.version, shape = excluded.shape, "
          "state = excluded.state",
          l.stream, static_cast<std::int64_t>(l.version),
          static_cast<std::int64_t>(snapshot_version_), to_json(l.state).dump());
    }
  }

  const upcasters* rewrites_ = nullptr;
  std::uint64_t snapshot_every_ = 0;
  std::uint32_t snapshot_version_ = 0;
};

}  // namespace cleave
