#include <cleave/testing/kit.hpp>

#include <fmt/format.h>

namespace cleave::testing {

namespace {
verdict no(std::string why) {
  return {false, std::move(why)};
}
}  // namespace

command_kit::command_kit(std::span<const migration> migrations, std::string_view component)
    : store_(std::make_unique<sqlite::store>(sqlite::options{.path = ":memory:"})),
      commands_(std::make_unique<cleave::command_bus>(store_.get())) {
  if (!migrations.empty()) store_->migrate(component, migrations);
}

void detail::append_stored(session_source& source, std::string_view stream, std::string_view type,
                           const json& payload) {
  write_scope tx(source, cleave::detail::no_meta);
  tx->append({.type = type, .stream = stream, .payload = payload, .expected_version = {}});
  tx.commit();
}

void detail::run_sql(session_source& source, std::string_view sql) {
  write_scope tx(source, cleave::detail::no_meta);
  tx->script(sql);  // test data: several statements are welcome
  tx.commit();
}

const result<json_outcome>& command_kit::outcome() const {
  if (!last_) throw std::logic_error("command_kit: call when(command) before checking its outcome");
  return *last_;
}

verdict command_kit::check_events(const std::vector<expected_event>& expected) const {
  const auto& r = outcome();
  if (!r) return no("the command failed: " + r.error().describe());
  std::string diff;
  for (std::size_t i = 0; i < std::max(expected.size(), appended_.size()); ++i) {
    const bool have = i < appended_.size(), want = i < expected.size();
    if (have && want && appended_[i].type == expected[i].type &&
        appended_[i].payload.value() == expected[i].payload)
      continue;
    diff += fmt::format("\n  event {}: expected {}, got {}", i,
                        want ? expected[i].type + " " + expected[i].payload.dump() : "nothing",
                        have ? appended_[i].type + " " + appended_[i].payload.dump() : "nothing");
  }
  if (diff.empty()) return {};
  return no(fmt::format("the command appended {} event(s), expected {}:{}", appended_.size(),
                        expected.size(), diff));
}

verdict command_kit::check_response(const json& expected) const {
  const auto& r = outcome();
  if (!r) return no("the command failed: " + r.error().describe());
  if (r->result == expected) return {};
  return no(fmt::format("expected the response {}, got {}", expected.dump(), r->result.dump()));
}

verdict command_kit::then_error(errc category, std::string_view text) const {
  const auto& r = outcome();
  if (r)
    return no(fmt::format("the command succeeded (response {}), expected a {} error",
                          r->result.dump(), to_string(category)));
  if (r.error().category != category)
    return no(
        fmt::format("expected a {} error, got {}", to_string(category), r.error().describe()));
  if (!text.empty() && r.error().message.find(text) == std::string::npos)
    return no(
        fmt::format("expected the message to contain '{}', got '{}'", text, r.error().message));
  if (!appended_.empty())
    return no(fmt::format("the command failed but {} event(s) reached the log", appended_.size()));
  return {};
}

}  // namespace cleave::testing
