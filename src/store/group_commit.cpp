#include <cleave/store/group_commit.hpp>

#include <stdexcept>

namespace cleave {

// The running member: forwards to the shared transaction, inside its own savepoint.
class group_commit::member final : public write_transaction {
 public:
  explicit member(group_commit& owner) : owner_(owner) {}

  void query(std::string_view sql, std::span<const sql_value> params,
             row_callback on_row) override {
    owner_.shared_->query(sql, params, on_row);
  }
  std::int64_t exec(std::string_view sql, std::span<const sql_value> params) override {
    return owner_.shared_->exec(sql, params);
  }
  std::uint64_t append(const pending_event& e) override { return owner_.shared_->append(e); }
  std::optional<remembered_outcome> remembered() override { return owner_.shared_->remembered(); }
  void remember(const remembered_outcome& o) override { owner_.shared_->remember(o); }
  void rebind(const request_meta& meta) override { owner_.shared_->rebind(meta); }
  position_token position_so_far() override { return owner_.shared_->position_so_far(); }

  position_token commit() override {
    std::unique_lock turn(owner_.mutex_, std::adopt_lock);  // taken in begin_write
    position_token mine;
    std::uint64_t group = owner_.group_;
    try {
      owner_.shared_->exec("release savepoint cleave_member", {});
      mine = owner_.shared_->position_so_far();
      ++owner_.members_;
    } catch (...) {
      undo();
      owner_.end_turn();
      turn.unlock();
      throw;
    }
    owner_.end_turn();
    const auto lsn = owner_.wait_for(group, turn);
    return position_token(mine.transaction(), mine.position(), lsn);
  }

  void rollback() noexcept override {
    std::unique_lock turn(owner_.mutex_, std::adopt_lock);
    undo();
    owner_.end_turn();
  }

 private:
  // Rolls this member's work back to its savepoint. If even that fails, the shared
  // transaction cannot go on: it is rolled back, and the group's members fail with it.
  void undo() noexcept {
    try {
      owner_.shared_->exec("rollback to savepoint cleave_member", {});
      owner_.shared_->exec("release savepoint cleave_member", {});
    } catch (...) {
      owner_.shared_->rollback();
      owner_.shared_ = nullptr;
      owner_.ended_[owner_.group_] = {std::current_exception(), 0, owner_.members_};
      owner_.members_ = 0;
      owner_.ended_cv_.notify_all();
    }
  }

  group_commit& owner_;
};

group_commit::group_commit(store& inner, std::size_t max_group)
    : inner_(inner),
      max_group_(max_group == 0 ? 1 : max_group),
      member_(std::make_unique<member>(*this)) {}

group_commit::~group_commit() = default;

write_transaction& group_commit::begin_write(const request_meta& meta) {
  ++waiting_;
  mutex_.lock();
  --waiting_;
  try {
    if (!shared_) {
      shared_ = &inner_.begin_write(meta);
      ++group_;
      members_ = 0;
    }
    shared_->rebind(meta);
    shared_->exec("savepoint cleave_member", {});
  } catch (...) {
    if (shared_ && members_ == 0) {  // nobody's work is in it yet
      shared_->rollback();
      shared_ = nullptr;
    }
    mutex_.unlock();
    throw;
  }
  return *member_;
}

read_transaction& group_commit::begin_read(const request_meta& meta) {
  return inner_.begin_read(meta);
}

void group_commit::end_turn() {
  if (!shared_) return;  // the group already ended (its transaction broke)
  if (members_ < max_group_ && waiting_.load() > 0) return;  // the next member joins this group
  auto* tx = std::exchange(shared_, nullptr);
  if (members_ == 0) {
    tx->rollback();
    return;
  }
  ended outcome{nullptr, 0, members_};
  try {
    outcome.lsn = tx->commit().lsn();
    ++groups_committed_;
    commands_committed_ += members_;
  } catch (...) {
    outcome.failure = std::current_exception();  // commit() already ended the transaction
  }
  ended_[group_] = outcome;
  members_ = 0;
  ended_cv_.notify_all();
}

std::uint64_t group_commit::wait_for(std::uint64_t group, std::unique_lock<std::mutex>& turn) {
  ended_cv_.wait(turn, [&] { return ended_.contains(group); });
  auto it = ended_.find(group);
  const ended outcome = it->second;
  if (--it->second.unread == 0) ended_.erase(it);
  turn.unlock();
  if (outcome.failure) std::rethrow_exception(outcome.failure);
  return outcome.lsn;
}

std::uint64_t group_commit::groups_committed() const {
  std::lock_guard lock(mutex_);
  return groups_committed_;
}

std::uint64_t group_commit::commands_committed() const {
  std::lock_guard lock(mutex_);
  return commands_committed_;
}

}  // namespace cleave
