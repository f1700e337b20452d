#include <cleave/testing/process_kit.hpp>

namespace cleave::testing {

process_kit::process_kit(init)
    : now_(std::make_shared<std::int64_t>(cleave::detail::unix_now_ms())),
      store_(std::make_unique<sqlite::store>(sqlite::options{.path = ":memory:"})),
      projector_(std::make_unique<cleave::projector>(*store_)) {
  projector_->set_max_attempts(1);  // a failing handler parks its event at once
  scheduler_ = std::make_unique<cleave::scheduler>(
      *store_,
      [db = store_.get(), out = taken_.get()](std::string_view wire_name, const json& payload,
                                              const request_meta& meta) {
        return out->take(*db, wire_name, payload, meta);
      },
      scheduler_options{}, [now = now_] { return *now; });
  projector_->add_leader_task([s = scheduler_.get()] { return s->run_due(); });
}

result<json_outcome> process_kit::outbox::take(cleave::store& db, std::string_view wire_name,
                                               const json& payload, const request_meta& meta) {
  for (const auto& [command, refusal] : refusals)
    if (command == wire_name) return std::unexpected(refusal);
  write_scope tx(db, meta);
  if (!cleave::detail::claim_schedule(*tx, meta.schedule_id))
    return fail(errc::not_found, "the scheduled command was cancelled or replaced");
  tx.commit();
  sent.push_back({std::string(wire_name), payload});
  return json_outcome{};
}

void process_kit::settle() {
  // A refusal's handler may send more: until nothing new is sent.
  for (std::size_t before = taken_->sent.size() + 1; before != taken_->sent.size();) {
    before = taken_->sent.size();
    projector_->catch_up();
  }
}

process_kit& process_kit::advance(std::chrono::milliseconds by) {
  settle();  // what was due before the clock moved goes first
  *now_ += by.count();
  settle();
  return *this;
}

const std::vector<process_kit::sent_command>& process_kit::sent() {
  settle();
  return taken_->sent;
}

std::vector<scheduled_command> process_kit::scheduled() {
  settle();
  std::vector<scheduled_command> out;
  for (auto& s : scheduler_->list(100000))
    if (s.state == "pending") out.push_back(std::move(s));
  return out;
}

json process_kit::state(std::string_view instance) {
  settle();
  read_scope tx(*store_, cleave::detail::no_meta);
  read_context ctx(&*tx, cleave::detail::no_meta);
  auto text = ctx.one<std::string>(
      expand_view("select state from {view} where instance = $1", name_), instance);
  if (!text) return nullptr;
  return parse_json(*text).value_or(json());
}

verdict process_kit::compare(std::string_view what, const json& got, const json& expected) {
  if (got == expected) return {};
  return {false, fmt::format("expected {} {}, got {}", what, expected.dump(), got.dump())};
}

}  // namespace cleave::testing
