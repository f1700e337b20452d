// libFuzzer target: any bytes as an HTTP request, through Beast's parser (with the server's
// limits) and the router, against an application on in-memory SQLite. Every answer must be a
// known status, and every error a well-formed problem+json document.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <set>

#include "asio.hpp"
#include "router.hpp"

namespace fuzz {
struct note_down {
  std::string id;
  std::int64_t amount = 0;
  cleave::result<void> validate() const {
    if (amount < 0) return cleave::invalid("amount", "must not be negative");
    return {};
  }
};
CLEAVE_COMMAND(note_down, "fuzz.note_down", id, amount)

struct total {
  std::string id;
  using response = std::int64_t;
};
CLEAVE_QUERY(total, "fuzz.total", id)

constexpr cleave::migration schema[] = {
    {1, "notes", "create table notes(id text not null, amount bigint not null)"}};

cleave::app& the_app() {
  static auto* a = [] {
    cleave::app_config cfg;
    cfg.database = ":memory:";
    cfg.max_json_depth = 16;
    cfg.log_level = "off";
    auto* made = new cleave::app(cfg);
    made->add_migrations("fuzz", schema);
    made->migrate();
    made->commands().use<cleave::validation>();
    made->commands().add([](const note_down& c, cleave::write_context& tx) -> cleave::result<void> {
      if (c.id == "refuse") return cleave::rejected("refused");
      tx.exec("insert into notes(id, amount) values ($1, $2)", c.id, c.amount);
      return {};
    });
    made->queries().add([](const total& q,
                           const cleave::read_context& db) -> cleave::result<std::int64_t> {
      return db.one<std::int64_t>("select coalesce(sum(amount), 0) from notes where id = $1", q.id);
    });
    return made;
  }();
  return *a;
}
}  // namespace fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace bhttp = boost::beast::http;
  static cleave::http::detail::router router(fuzz::the_app());
  bhttp::request_parser<bhttp::string_body> parser;
  parser.header_limit(8192);
  parser.body_limit(64 * 1024);
  parser.eager(true);
  boost::beast::error_code ec;
  parser.put(boost::asio::buffer(data, size), ec);
  if (ec || !parser.is_done()) return 0;  // the server answers these with 400/413/431 and closes
  const auto& req = parser.get();
  cleave::http::detail::request r;
  r.method = std::string(req.method_string());
  r.target = std::string(req.target());
  r.content_type = std::string(req[bhttp::field::content_type]);
  r.authorization = std::string(req[bhttp::field::authorization]);
  r.min_position = std::string(req["Cleave-Min-Position"]);
  r.consistency = std::string(req["Cleave-Consistency"]);
  r.body = req.body();
  const auto res = router.handle(r);
  static const std::set<int> known{200, 400, 401, 403, 404, 405, 409, 413, 415, 422, 431, 500, 503};
  if (!known.contains(res.status)) std::abort();
  if (res.status >= 400) {
    auto problem = cleave::json::parse(res.body, nullptr, false);
    if (problem.is_discarded() || problem.value("status", 0) != res.status ||
        !problem.contains("type"))
      std::abort();
  }
  return 0;
}
