#pragma once
// Short transactions of the framework's own parts (the projector, the scheduler) on a store:
// reads on the primary, writes at read committed.

#include <utility>

#include <cleave/core/context.hpp>
#include <cleave/core/detail/bus_core.hpp>
#include <cleave/store/store.hpp>

namespace cleave::detail {

// Runs `body` with a read-only context on `db`, always ending the transaction.
template <class F>
auto reading(store& db, F&& body) {
  // The primary, never a standby: a checkpoint or a schedule read behind the truth would make
  // batches fail their compare-and-set, waits last until the standby caught up, and due
  // commands be sent again.
  read_scope tx(db, no_meta, strong());
  read_context ctx(&*tx, no_meta);
  return body(ctx);
}

// Runs `body` with a write context on `db`; commits unless it returns false or throws.
template <class F>
bool writing(store& db, F&& body) {
  // Read committed: the projector is the only writer of its views and checkpoints, and a
  // serializable batch could be given up for commands that merely append to the log.
  write_scope tx(db, no_meta, isolation::read_committed);
  write_context ctx(&*tx, no_meta);
  if (!body(*tx, ctx)) return false;
  tx.commit();
  return true;
}

}  // namespace cleave::detail
