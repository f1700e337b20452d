// The wal-index header (see wal_index.hpp). Its layout, from SQLite's file format: two copies of
// a 48-byte header (WalIndexHdr) at offsets 0 and 48, each twelve 32-bit words in native byte
// order — version, unused, change counter, isInit/bigEndCksum/page size, the last valid frame,
// the database's size, the last frame's checksum (2), the salts (2) and the header's checksum
// (2). A writer writes the second copy, then (after a memory barrier) the first; a reader reads
// the first, then the second, and trusts them only when they agree. Then follows the checkpoint
// information.

#include "wal_index.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace cleave::sqlite::detail {

namespace {
constexpr std::size_t header_words = 12;
constexpr std::size_t initialised_at = 12;  // the byte isInit, in the third word
}  // namespace

std::unique_ptr<wal_index_header> wal_index_header::of(sqlite3* connection) {
  sqlite3_file* file = nullptr;
  if (sqlite3_file_control(connection, "main", SQLITE_FCNTL_FILE_POINTER, &file) != SQLITE_OK ||
      file == nullptr || file->pMethods == nullptr || file->pMethods->iVersion < 2 ||
      file->pMethods->xShmMap == nullptr)
    return nullptr;
  // Region 0 as the connection's WAL already has it mapped (bExtend = 0: nothing is created).
  constexpr int region_bytes = 32 * 1024;
  volatile void* mapped = nullptr;
  if (file->pMethods->xShmMap(file, 0, region_bytes, 0, &mapped) != SQLITE_OK || mapped == nullptr)
    return nullptr;
  return std::unique_ptr<wal_index_header>(new wal_index_header(mapped));
}

std::optional<data_version> wal_index_header::read() const noexcept {
  const auto* words = reinterpret_cast<const volatile std::uint32_t*>(mapped_);
  auto copy = [&](std::size_t first, data_version& into) {
    for (std::size_t i = 0; i < header_words; ++i)
      into.words[i] = __atomic_load_n(&words[first + i], __ATOMIC_RELAXED);
  };
  for (int attempt = 0; attempt < 3; ++attempt) {
    data_version first, second;
    copy(0, first);
    std::atomic_thread_fence(std::memory_order_acquire);  // as SQLite's walShmBarrier
    copy(header_words, second);
    if (first == second) {
      const bool initialised =
          reinterpret_cast<const unsigned char*>(&first.words[0])[initialised_at] != 0;
      return initialised ? std::optional(first) : std::nullopt;
    }
  }
  return std::nullopt;  // a commit is writing it: nothing to reuse at this moment
}

}  // namespace cleave::sqlite::detail
