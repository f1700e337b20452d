// Leases: an flock() on a file beside the database, or a name held in memory for ":memory:".

#include <cctype>
#include <utility>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <fmt/format.h>

#include "store_impl.hpp"

namespace cleave::sqlite {

namespace {

// A lease is an exclusive flock() on a file beside the database: the kernel drops it when the
// process dies. For an in-memory database (one process), a set of held names.
class file_lease final : public lease {
 public:
  explicit file_lease(int fd) noexcept : fd_(fd) {}
  ~file_lease() override { ::close(fd_); }
  bool held() override { return true; }

 private:
  int fd_;
};

class memory_lease final : public lease {
 public:
  memory_lease(std::string name, std::mutex& m, std::set<std::string, std::less<>>& held)
      : name_(std::move(name)), mutex_(m), held_(held) {}
  ~memory_lease() override {
    std::lock_guard lock(mutex_);
    held_.erase(name_);
  }
  bool held() override { return true; }

 private:
  std::string name_;
  std::mutex& mutex_;
  std::set<std::string, std::less<>>& held_;
};

std::string lease_file(const std::string& db_path, std::string_view name) {
  std::string out = db_path + ".lease-";
  for (char c : name) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return out;
}

}  // namespace

std::unique_ptr<lease> store::try_lease(std::string_view name) {
  if (impl_->memory) {
    std::lock_guard lock(impl_->leases_mutex);
    if (!impl_->memory_leases.emplace(name).second) return nullptr;
    return std::make_unique<memory_lease>(std::string(name), impl_->leases_mutex,
                                          impl_->memory_leases);
  }
  const auto file = lease_file(options_.path, name);
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    throw error_exception({errc::unavailable, fmt::format("cannot open lease file {}", file), {}});
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return nullptr;
  }
  return std::make_unique<file_lease>(fd);
}

}  // namespace cleave::sqlite
