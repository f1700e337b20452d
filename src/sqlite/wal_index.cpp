// The wal-index header (see wal_index.hpp). Its layout, from SQLite's file format: two copies of
// a 48-byte header (WalIndexHdr) at offsets 0 and 48, each twelve 32-bit words in native byte
// order — version, unused, change counter, isInit/bigEndCksum/page size, the last valid frame,
// the database's size, the last frame's checksum (2), the salts (2) and the header's checksum
// (2). A writer writes the second copy, then (after a memory barrier) the first; a reader reads
// the first, then the second, and trusts them only when they agree. Then follows the checkpoint
// information, so the file is at least 136 bytes long once initialised.

#include "wal_index.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace cleave::sqlite::detail {

namespace {
constexpr std::size_t header_words = 12;
constexpr std::size_t header_bytes = header_words * sizeof(std::uint32_t);
constexpr std::size_t mapped_bytes = 2 * header_bytes;
constexpr std::size_t initialised_at = 12;  // the byte isInit, in the third word
}  // namespace

std::unique_ptr<wal_index_header> wal_index_header::open(const std::string& database) {
  const std::string path = database + "-shm";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  struct stat st {};
  void* mapped = MAP_FAILED;
  if (::fstat(fd, &st) == 0 && static_cast<std::size_t>(st.st_size) >= mapped_bytes)
    mapped = ::mmap(nullptr, mapped_bytes, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);  // the mapping stays
  if (mapped == MAP_FAILED) return nullptr;
  return std::unique_ptr<wal_index_header>(new wal_index_header(mapped));
}

wal_index_header::~wal_index_header() {
  ::munmap(const_cast<unsigned char*>(mapped_), mapped_bytes);
}

std::optional<data_version> wal_index_header::read() const noexcept {
  const auto* words = reinterpret_cast<const std::uint32_t*>(mapped_);
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
