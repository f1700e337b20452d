#include <cleave/testing/projection_kit.hpp>

namespace cleave::testing {

projection_kit::projection_kit(projection p, std::span<const migration> migrations,
                               std::string_view component)
    : projection_kit(std::move(p), upcasters{}, migrations, component) {}

projection_kit::projection_kit(projection p, const upcasters& rewrites,
                               std::span<const migration> migrations, std::string_view component)
    : store_(std::make_unique<sqlite::store>(sqlite::options{.path = ":memory:"})),
      rewrites_(std::make_unique<upcasters>(rewrites)),
      name_(p.name()),
      table_(p.table()),
      projector_(std::make_unique<cleave::projector>(*store_, rewrites_.get())) {
  if (!migrations.empty()) store_->migrate(component, migrations);
  projector_->set_max_attempts(1);  // a failing handler parks its event at once
  projector_->add(std::move(p));
}

void projection_kit::settle() {
  projector_->catch_up();
}

verdict projection_kit::then_dead_letters(std::size_t n) {
  settle();
  const auto parked = projector_->dead_letters(name_);
  if (parked.size() == n) return {};
  std::string why = fmt::format("expected {} dead letters, found {}", n, parked.size());
  for (const auto& d : parked)
    why += fmt::format("; {} at {}: {}", d.type, d.position.to_string(), d.error);
  return {false, why};
}

verdict projection_kit::compare(const json& got, const json& expected) {
  if (got == expected) return {};
  return {false, fmt::format("expected the rows {}, got {}", expected.dump(), got.dump())};
}

}  // namespace cleave::testing
