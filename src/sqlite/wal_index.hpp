#pragma once
// Reads the header of a database's wal-index (its "-shm" file) without a transaction: the
// store's data_version. SQLite rewrites the header at every commit, of any connection in any
// process (its layout is part of SQLite's documented file format, "The WAL-Index Format"), and a
// reader that starts a snapshot takes the data the header names. Internal to src/sqlite.

#include <memory>
#include <optional>
#include <string>

#include <cleave/store/store.hpp>

namespace cleave::sqlite::detail {

class wal_index_header {
 public:
  // Maps the header of `database`'s "-shm" file read-only; null when there is none to map. Call
  // it once a connection of the caller's holds the database open in WAL mode, and keep that
  // connection open as long as this lives: SQLite truncates or removes the file only when no
  // connection has it open.
  static std::unique_ptr<wal_index_header> open(const std::string& database);
  ~wal_index_header();
  wal_index_header(const wal_index_header&) = delete;
  wal_index_header& operator=(const wal_index_header&) = delete;

  // The header's first copy when both copies agree (no commit is writing it) and the index is
  // initialised; else empty.
  std::optional<data_version> read() const noexcept;

 private:
  explicit wal_index_header(const void* mapped)
      : mapped_(static_cast<const unsigned char*>(mapped)) {}
  const unsigned char* mapped_;
};

}  // namespace cleave::sqlite::detail
