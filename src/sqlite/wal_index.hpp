#pragma once
// Reads the header of a database's wal-index (its "-shm" file) without a transaction: the
// store's data_version. SQLite rewrites the header at every commit, of any connection in any
// process (its layout is part of SQLite's documented file format, "The WAL-Index Format"), and a
// reader that starts a snapshot takes the data the header names. Internal to src/sqlite.

#include <memory>
#include <optional>
#include <string>

#include <sqlite3.h>

#include <cleave/store/store.hpp>

namespace cleave::sqlite::detail {

class wal_index_header {
 public:
  // The header as SQLite maps it for `connection`, a connection on a database in WAL mode (its
  // VFS's own mapping of the index's first region: no descriptor of ours opens the file, whose
  // closing would drop the locks SQLite holds on it). Null when it offers none. Valid as long
  // as `connection` stays open in WAL mode.
  static std::unique_ptr<wal_index_header> of(sqlite3* connection);

  // The header's first copy when both copies agree (no commit is writing it) and the index is
  // initialised; else empty.
  std::optional<data_version> read() const noexcept;

 private:
  explicit wal_index_header(const volatile void* mapped)
      : mapped_(static_cast<const volatile unsigned char*>(mapped)) {}
  const volatile unsigned char* mapped_;
};

}  // namespace cleave::sqlite::detail
