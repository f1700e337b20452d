#include <cleave/read/consistency.hpp>

#include <fmt/format.h>

namespace cleave {

result<void> read_your_writes::handle(const message_ref& message, const request_meta& meta,
                                      next_step next) {
  if (meta.consistency.required == consistency::level::at_least &&
      !meta.consistency.token.empty()) {
    auto it = reads_.find(message.info().wire_name);
    if (it != reads_.end()) {
      const auto deadline =
          meta.deadline == clock::time_point::max() ? clock::now() + budget_ : meta.deadline;
      for (const auto& name : it->second) {
        const auto at = projector_.wait_for(name, meta.consistency.token, deadline);
        if (at < meta.consistency.token)
          return fail(
              errc::unavailable,
              fmt::format("the view '{}' is at position {}, behind the requested {}; try again",
                          name, at.to_string(), meta.consistency.token.to_string()));
      }
    }
  }
  return next();
}

}  // namespace cleave
