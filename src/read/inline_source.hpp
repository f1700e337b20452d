#pragma once
// Inline projections: a session source over another one (the store, or anything stacked on it)
// whose transactions apply the inline projections' handlers to each event as it is appended, in
// the command's own transaction, and wake the async worker after each commit. Internal to
// src/read.

#include <algorithm>
#include <memory>
#include <mutex>
#include <vector>

#include <cleave/read/projector.hpp>
#include <cleave/store/detail/forwarding.hpp>

namespace cleave {

class projector::inline_source final : public session_source {
 public:
  inline_source(projector& owner, session_source& inner) : owner_(owner), inner_(inner) {}

  using session_source::begin_write;
  write_transaction& begin_write(const request_meta& meta, isolation level) override {
    auto& inner = inner_.begin_write(meta, level);
    std::lock_guard lock(mutex_);
    if (free_.empty()) {
      all_.push_back(std::make_unique<tx>(*this));
      free_.push_back(all_.back().get());
    }
    tx* t = free_.back();
    free_.pop_back();
    t->begin(inner);
    return *t;
  }
  using session_source::begin_read;
  read_transaction& begin_read(const request_meta& meta, const consistency& wanted) override {
    return inner_.begin_read(meta, wanted);
  }

 private:
  struct tx final : cleave::detail::forwarding_transaction {
    explicit tx(inline_source& o) : owner(o) {}
    inline_source& owner;

    void begin(write_transaction& inner) noexcept { inner_ = &inner; }

    std::uint64_t append(const pending_event& e) override {
      const bool handled = std::any_of(
          owner.owner_.projections_.begin(), owner.owner_.projections_.end(), [&](const auto& p) {
            return p.def.mode() == projection_mode::inline_ && p.def.handler_for(e.type);
          });
      if (!handled) return inner_->append(e);
      // Its handlers get the event as stored: with its stream version.
      const auto version =
          e.version_wanted
              ? inner_->append(e)
              : inner_->append({e.type, e.stream, e.payload, e.expected_version, true});
      stored_event stored;
      for (const auto& entry : owner.owner_.projections_) {
        const auto& p = entry.def;
        if (p.mode() != projection_mode::inline_) continue;
        const auto* handler = p.handler_for(e.type);
        if (!handler) continue;
        if (stored.type.empty()) {
          stored.position = inner_->position_so_far();
          stored.stream = e.stream;
          stored.stream_version = version;
          stored.type = e.type;
          stored.payload = e.payload;
        }
        view_context view(*inner_, p.table(), stored);
        (*handler)(stored.payload, view);  // the payload converted once, for every handler
      }
      return version;
    }
    position_token commit() override {
      auto* ending = std::exchange(inner_, nullptr);
      owner.give_back(this);
      auto token = ending->commit();
      owner.owner_.notify();  // after commit, outside the command's transaction
      return token;
    }
    void rollback() noexcept override {
      auto* ending = std::exchange(inner_, nullptr);
      owner.give_back(this);
      ending->rollback();
    }
  };

  void give_back(tx* t) {
    std::lock_guard lock(mutex_);
    free_.push_back(t);
  }

  projector& owner_;
  session_source& inner_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<tx>> all_;
  std::vector<tx*> free_;
};

// Parked waits: one thread re-reads, on each wake-up, the checkpoints (or staleness) the parked
// waits need — once per projection, not once per wait — and calls back those that are done or
// past their deadline. While anyone waits, parked or blocking, and this projector does not lead,
// it also holds the store's progress watch and wakes every waiter from it: progress made by a

}  // namespace cleave
