// What the HTTP layer parses, one function at a time: percent-encoding, query strings typed by a
// query's schema, the consistency headers, Idempotency-Key, X-Correlation-Id, Content-Type and
// bearer tokens; then how the router answers what they refuse, and which reads it parks.

#include <sched.h>

#include <chrono>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "answer_cache.hpp"
#include "router.hpp"

namespace parsing {

// A query that reads the `tags` view and answers with the id it was given.
struct tag_added {
  std::string tag;
};
CLEAVE_EVENT(tag_added, "parsing.tag_added", tag)

struct echo {
  std::string id;
  using response = std::string;
};
CLEAVE_QUERY(echo, "parsing.echo", id)

}  // namespace parsing

namespace {

using cleave::json;
using namespace cleave::http::detail;
using testing::HasSubstr;

// --- percent-encoding ----------------------------------------------------------------------

TEST(percent_decode, decodes_escapes_in_either_case_and_keeps_the_rest) {
  EXPECT_EQ(percent_decode("a%20b", false), "a b");
  EXPECT_EQ(percent_decode("%4a%4A", false), "JJ");
  EXPECT_EQ(percent_decode("%2B", true), "+");  // an encoded plus stays a plus
  EXPECT_EQ(percent_decode("caf%C3%A9", false), "caf\xC3\xA9");
  EXPECT_EQ(percent_decode("", false), "");
  EXPECT_EQ(percent_decode("plain-text_~.", false), "plain-text_~.");
}

TEST(percent_decode, a_plus_is_a_space_only_in_query_strings) {
  EXPECT_EQ(percent_decode("a+b", true), "a b");
  EXPECT_EQ(percent_decode("a+b", false), "a+b");
}

TEST(percent_decode, a_percent_without_two_hex_digits_is_malformed) {
  for (const char* bad : {"%", "abc%", "%4", "a%4", "%zz", "%4g", "%g4", "%%41", "% 41", "%+1"})
    EXPECT_EQ(percent_decode(bad, true), std::nullopt) << bad;
}

TEST(percent_decode, nul_decodes_to_a_nul_byte_for_the_decoder_to_refuse) {
  const auto s = percent_decode("a%00b", true);
  ASSERT_TRUE(s);
  EXPECT_EQ(*s, std::string("a\0b", 3));
}

// --- query strings -----------------------------------------------------------------------------

const json schema = json::parse(R"({
  "type": "object",
  "properties": {
    "name": {"type": "string"}, "count": {"type": "integer"},
    "price": {"type": "number"}, "open": {"type": "boolean"}
  },
  "required": ["name"]
})");

TEST(query_to_json, members_are_typed_by_the_schema) {
  auto q = query_to_json("name=caf%C3%A9+au+lait&count=-3&price=2.5e1&open=true", schema);
  ASSERT_TRUE(q) << q.error().describe();
  EXPECT_EQ(*q, json::parse(R"({"name": "café au lait", "count": -3, "price": 25.0,
                                "open": true})"));
}

TEST(query_to_json, an_unknown_member_stays_a_string_and_empty_pairs_are_skipped) {
  auto q = query_to_json("&colour=red&&flag&name=", schema);
  ASSERT_TRUE(q) << q.error().describe();
  EXPECT_EQ(*q, json::parse(R"({"colour": "red", "flag": "", "name": ""})"));
  auto none = query_to_json("", schema);
  ASSERT_TRUE(none);
  EXPECT_EQ(*none, json::object());
}

TEST(query_to_json, a_value_that_does_not_parse_whole_is_refused_naming_the_member) {
  const std::pair<const char*, const char*> cases[] = {
      {"count=12x", "count: expected an integer, got '12x'"},
      {"count=", "count: expected an integer, got ''"},
      {"count=1.5", "count: expected an integer, got '1.5'"},
      {"count=99999999999999999999", "count: expected an integer, got '99999999999999999999'"},
      {"price=1e", "price: expected a number, got '1e'"},
      {"price=", "price: expected a number, got ''"},
      {"open=yes", "open: expected true or false, got 'yes'"},
      {"open=True", "open: expected true or false, got 'True'"},
  };
  for (const auto& [query, message] : cases) {
    auto q = query_to_json(query, schema);
    ASSERT_FALSE(q) << query;
    EXPECT_EQ(q.error().category, cleave::errc::validation);
    EXPECT_EQ(q.error().message, message);
  }
}

TEST(query_to_json, malformed_percent_encoding_and_repeats_are_refused_naming_the_member) {
  auto bad_value = query_to_json("name=%zz", schema);
  ASSERT_FALSE(bad_value);
  EXPECT_EQ(bad_value.error().message, "name: malformed percent-encoding");
  auto bad_key = query_to_json("na%6=x", schema);
  ASSERT_FALSE(bad_key);
  EXPECT_EQ(bad_key.error().message, "na%6: malformed percent-encoding");
  // A member given twice, even spelt two ways, is ambiguous.
  auto twice = query_to_json("name=a&n%61me=b", schema);
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error().message, "name: given more than once");
}

TEST(non_scalar_member, names_the_first_member_a_query_string_cannot_carry) {
  EXPECT_EQ(non_scalar_member(schema), std::nullopt);
  for (const char* member : {R"({"type": "array"})", R"({"type": "object"})", R"({})"}) {
    json s = schema;
    s["properties"]["tags"] = json::parse(member);
    EXPECT_EQ(non_scalar_member(s), "tags") << member;
  }
}

// --- consistency headers -----------------------------------------------------------------------

using level = cleave::consistency::level;

TEST(requested_consistency, no_header_asks_for_nothing) {
  auto c = requested_consistency("", "");
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, std::nullopt);
}

TEST(requested_consistency, each_level_of_cleave_consistency) {
  auto eventual = requested_consistency("", "eventual");
  ASSERT_TRUE(eventual && *eventual);
  EXPECT_EQ((*eventual)->required, level::eventual);
  auto strong = requested_consistency("", "strong");
  ASSERT_TRUE(strong && *strong);
  EXPECT_EQ((*strong)->required, level::strong);
  auto bounded = requested_consistency("", "bounded=250");
  ASSERT_TRUE(bounded && *bounded);
  EXPECT_EQ((*bounded)->required, level::bounded);
  EXPECT_EQ((*bounded)->max_staleness, std::chrono::milliseconds(250));
  auto at_least = requested_consistency("", "at_least=1.2.3");
  ASSERT_TRUE(at_least && *at_least);
  EXPECT_EQ((*at_least)->required, level::at_least);
  EXPECT_EQ((*at_least)->token, cleave::position_token(1, 2, 3));
  // The empty token (a command that wrote nothing answers with it) waits for nothing.
  auto nothing = requested_consistency("", "at_least=");
  ASSERT_TRUE(nothing && *nothing);
  EXPECT_TRUE((*nothing)->token.empty());
}

TEST(requested_consistency, cleave_min_position_is_at_least_and_wins) {
  auto c = requested_consistency("0.a.0", "strong");
  ASSERT_TRUE(c && *c);
  EXPECT_EQ((*c)->required, level::at_least);
  EXPECT_EQ((*c)->token, cleave::position_token(0, 10));
  // Even a malformed Cleave-Consistency is not read when the position is given.
  EXPECT_TRUE(requested_consistency("0.a.0", "bogus"));
}

TEST(requested_consistency, a_far_future_token_parses_the_read_side_refuses_it) {
  // Parsing cannot know what the store issued: the wait refuses it (see the router test below).
  auto c = requested_consistency("ffffffffffffffff.ffffffffffffffff.0", "");
  ASSERT_TRUE(c && *c) << c.error().describe();
  EXPECT_EQ((*c)->token, cleave::position_token(~0ull, ~0ull));
}

TEST(requested_consistency, a_malformed_header_is_a_validation_error_saying_what_is_expected) {
  for (const char* bad : {"bogus", "Strong", "eventual ", "bounded=", "bounded=-1", "bounded=1.5",
                          "bounded=10ms", "at_least=zzz", "at_least=1.2"}) {
    auto c = requested_consistency("", bad);
    ASSERT_FALSE(c) << bad;
    EXPECT_EQ(c.error().category, cleave::errc::validation) << bad;
  }
  EXPECT_EQ(requested_consistency("", "bogus").error().message,
            "consistency: 'bogus' is not eventual, strong, bounded=<ms> or at_least=<token> "
            "(each optionally followed by ;dead_letters=accept)");
  for (const char* bad : {"zzz", "1.2", "1.2.3.4", "-1.2.3", "1..3"}) {
    auto c = requested_consistency(bad, "");
    ASSERT_FALSE(c) << bad;
    EXPECT_THAT(c.error().message, HasSubstr("malformed position token")) << bad;
  }
}

// --- other header fields -----------------------------------------------------------------------

TEST(parse_idempotency_key, takes_a_bare_key_or_a_structured_field_string) {
  EXPECT_EQ(parse_idempotency_key("order-42"), "order-42");
  EXPECT_EQ(parse_idempotency_key(R"("order-42")"), "order-42");
  EXPECT_EQ(parse_idempotency_key(R"("a\"b\\c")"), R"(a"b\c)");
  for (const char* bad : {R"(")", R"("abc)", R"("a"b")", R"("a\b")", R"("abc\")"}) {
    auto k = parse_idempotency_key(bad);
    ASSERT_FALSE(k) << bad;
    EXPECT_EQ(k.error().message, "the Idempotency-Key header is not a well-formed string");
  }
}

TEST(accepted_correlation_id, keeps_1_to_64_visible_characters_and_drops_the_rest) {
  EXPECT_EQ(accepted_correlation_id("req-1"), "req-1");
  EXPECT_EQ(accepted_correlation_id(std::string(64, 'x')), std::string(64, 'x'));
  EXPECT_EQ(accepted_correlation_id(std::string(65, 'x')), "");
  EXPECT_EQ(accepted_correlation_id(""), "");
  EXPECT_EQ(accepted_correlation_id("a b"), "");
  EXPECT_EQ(accepted_correlation_id("a\nb"), "");
  EXPECT_EQ(accepted_correlation_id("caf\xC3\xA9"), "");
}

TEST(is_json, compares_the_media_type_case_insensitively_without_parameters) {
  for (const char* yes : {"application/json", "Application/JSON", " application/json ",
                          "application/json; charset=utf-8", "application/json;charset=UTF-8"})
    EXPECT_TRUE(is_json(yes)) << yes;
  for (const char* no : {"", "text/json", "application/jsonx", "application/json-patch+json",
                         "text/plain; application/json"})
    EXPECT_FALSE(is_json(no)) << no;
}

// --- bearer tokens -----------------------------------------------------------------------------

const std::map<std::string, cleave::principal> tokens{{"t-ann", {"ann", {"clerk"}}},
                                                      {"t-boss", {"boss", {"admin"}}}};

TEST(bearer_principal, the_token_names_its_principal_whatever_the_scheme_case) {
  for (const char* field : {"Bearer t-ann", "bearer t-ann", "BEARER t-ann", "  Bearer   t-ann\t"}) {
    auto who = bearer_principal(field, tokens);
    ASSERT_TRUE(who) << field;
    EXPECT_EQ(who->subject, "ann") << field;
  }
  EXPECT_EQ(bearer_principal("Bearer t-boss", tokens)->subject, "boss");
}

TEST(bearer_principal, no_bearer_token_or_another_scheme_is_unauthorized) {
  for (const char* field : {"", "Bearer", "t-ann", "Basic dC1hbm46", "Token t-ann"}) {
    auto who = bearer_principal(field, tokens);
    ASSERT_FALSE(who) << field;
    EXPECT_EQ(who.error().category, cleave::errc::unauthorized);
    EXPECT_EQ(who.error().message, "a bearer token is required") << field;
  }
}

TEST(bearer_principal, a_token_matches_only_whole_and_in_its_case) {
  for (const char* field : {"Bearer t-an", "Bearer t-annn", "Bearer T-ANN", "Bearer t-ann t-ann",
                            "Bearer t-annt-ann", "Bearer nobody"}) {
    auto who = bearer_principal(field, tokens);
    ASSERT_FALSE(who) << field;
    EXPECT_EQ(who.error().category, cleave::errc::unauthorized);
    EXPECT_EQ(who.error().message, "the bearer token is not valid") << field;
  }
  EXPECT_FALSE(bearer_principal("Bearer t-ann", {}));
}

// --- the router: what it answers for these, and which reads it parks ---------------------------

struct router_parsing : testing::Test {
  std::unique_ptr<cleave::app> app;
  std::unique_ptr<router> routes;

  void start(bool with_tokens) {
    cleave::app_config cfg;
    cfg.database = ":memory:";
    cfg.run_projector = false;
    if (with_tokens) {
      cfg.tokens = tokens;
      cfg.roles = {{"parsing.echo", "clerk"}};
    }
    app = std::make_unique<cleave::app>(cfg);
    app->queries().add([](const parsing::echo& q) { return cleave::result<std::string>(q.id); });
    cleave::projection tags{"tags"};
    tags.schema("create table {view}(tag text primary key)")
        .on([](const parsing::tag_added& e, cleave::view_context& v) {
          v.exec("insert into {view}(tag) values ($1)", e.tag);
        });
    app->add_projection(std::move(tags));
    app->reads("parsing.echo", {"tags"});
    app->migrate();
    routes = std::make_unique<router>(*app);
  }
  static request get(std::string target, std::string authorization = {}) {
    request r;
    r.method = "GET";
    r.target = std::move(target);
    r.authorization = std::move(authorization);
    return r;
  }
  static json body(const response& r) { return json::parse(r.body); }
  static std::string header(const response& r, const std::string& name) {
    for (const auto& [n, v] : r.headers)
      if (n == name) return v;
    return {};
  }
};

TEST_F(router_parsing, a_read_asking_for_more_than_eventual_is_parked_once_vetted) {
  start(true);
  auto strong = get("/queries/parsing.echo?id=n1", "Bearer t-ann");
  strong.consistency = "strong";
  const auto parked = routes->vet(strong);
  ASSERT_TRUE(parked);
  EXPECT_EQ(parked->name, "parsing.echo");
  EXPECT_EQ(parked->wanted.required, level::strong);
  // Nothing to wait for in an empty log: handle() answers it with what vet() found.
  const auto answer = routes->handle(strong);
  EXPECT_EQ(answer.status, 200) << answer.body;
  EXPECT_EQ(body(answer)["result"], "n1");

  auto eventual = get("/queries/parsing.echo?id=n1", "Bearer t-ann");
  eventual.consistency = "eventual";
  EXPECT_FALSE(routes->vet(eventual));
  auto plain = get("/queries/parsing.echo?id=n1", "Bearer t-ann");
  EXPECT_FALSE(routes->vet(plain));
  auto command = get("/commands/parsing.echo", "Bearer t-ann");
  command.method = "POST";
  command.consistency = "strong";
  EXPECT_FALSE(routes->vet(command));
  EXPECT_FALSE(command.vetted);
}

TEST_F(router_parsing, a_wrong_token_is_never_parked_and_gets_a_401_asking_for_bearer) {
  start(true);
  for (const char* authorization : {"", "Basic x", "Bearer t-an", "bearer wrong"}) {
    auto r = get("/queries/parsing.echo?id=n1", authorization);
    r.consistency = "strong";
    EXPECT_FALSE(routes->vet(r)) << authorization;
    const auto answer = routes->handle(r);
    EXPECT_EQ(answer.status, 401) << authorization;
    EXPECT_EQ(body(answer)["type"], "/problems/unauthorized");
    EXPECT_EQ(body(answer)["title"], "Unauthorized");
    EXPECT_EQ(header(answer, "WWW-Authenticate"), "Bearer");
  }
  // The scheme in any case.
  auto upper = get("/queries/parsing.echo?id=n1", "BEARER t-ann");
  EXPECT_EQ(routes->handle(upper).status, 200);
}

TEST_F(router_parsing, a_caller_without_the_role_is_refused_at_once_not_parked) {
  start(true);
  auto r = get("/queries/parsing.echo?id=n1", "Bearer t-boss");  // admin, not clerk
  r.consistency = "strong";
  EXPECT_FALSE(routes->vet(r));
  const auto answer = routes->handle(r);
  EXPECT_EQ(answer.status, 403) << answer.body;
  EXPECT_EQ(body(answer)["type"], "/problems/forbidden");
}

TEST_F(router_parsing, a_malformed_consistency_header_is_a_400_naming_it) {
  start(false);
  for (auto [min_position, consistency] :
       {std::pair{"", "bounded=soon"}, std::pair{"not-a-token", ""}}) {
    auto r = get("/queries/parsing.echo?id=n1");
    r.min_position = min_position;
    r.consistency = consistency;
    EXPECT_FALSE(routes->vet(r));
    const auto answer = routes->handle(r);
    EXPECT_EQ(answer.status, 400) << answer.body;
    EXPECT_EQ(body(answer)["type"], "/problems/validation");
    EXPECT_THAT(body(answer)["detail"].get<std::string>(),
                HasSubstr(*min_position ? "malformed position token" : "bounded=<ms>"));
  }
}

TEST_F(router_parsing, a_far_future_position_is_refused_at_once_as_never_issued) {
  start(false);
  auto r = get("/queries/parsing.echo?id=n1");
  r.min_position = "0.ffffffff.0";
  const auto parked = routes->vet(r);
  ASSERT_TRUE(parked);  // well-formed: the read side decides
  EXPECT_EQ(parked->wanted.required, level::at_least);
  const auto t0 = std::chrono::steady_clock::now();
  const auto answer = routes->handle(r);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  EXPECT_EQ(answer.status, 400) << answer.body;
  EXPECT_EQ(body(answer)["type"], "/problems/validation");
  EXPECT_THAT(answer.body, HasSubstr("has not issued"));
}

TEST_F(router_parsing, a_query_string_that_does_not_decode_is_a_400_naming_the_member) {
  start(false);
  for (const char* target : {"/queries/parsing.echo?id=%zz", "/queries/parsing.echo?id=a&id=b"}) {
    const auto answer = routes->handle(get(target));
    EXPECT_EQ(answer.status, 400) << target;
    EXPECT_EQ(body(answer)["errors"][0]["path"], "id") << target;
  }
  const auto plus = routes->handle(get("/queries/parsing.echo?id=a+b%2Bc"));
  ASSERT_EQ(plus.status, 200) << plus.body;
  EXPECT_EQ(body(plus)["result"], "a b+c");
}

// The default number of I/O threads follows the CPUs the process may use, not the host's.
TEST(usable_cpus, a_cgroup_quota_counts_as_whole_cpus_rounded_up) {
  using cleave::http::detail::cpus_in_quota;
  EXPECT_EQ(cpus_in_quota("200000 100000\n"), 2u);
  EXPECT_EQ(cpus_in_quota("150000 100000"), 2u);
  EXPECT_EQ(cpus_in_quota("50000 100000"), 1u);
  for (const char* none : {"max 100000\n", "", "-1 100000", "0 100000", "100000", "1 0", "x y"})
    EXPECT_EQ(cpus_in_quota(none), std::nullopt) << '"' << none << '"';
}

TEST(usable_cpus, a_thread_bound_to_one_cpu_counts_one) {
  const auto all = cleave::http::detail::usable_cpus();
  EXPECT_GE(all, 1u);
  EXPECT_LE(all, std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t before, one;
  ASSERT_EQ(::sched_getaffinity(0, sizeof before, &before), 0);
  CPU_ZERO(&one);
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &before)) {
      CPU_SET(cpu, &one);
      break;
    }
  ASSERT_EQ(::sched_setaffinity(0, sizeof one, &one), 0);
  const auto bound = cleave::http::detail::usable_cpus();
  ::sched_setaffinity(0, sizeof before, &before);
  EXPECT_EQ(bound, 1u);
}

}  // namespace

namespace {

cleave::data_version version_of(std::uint32_t n) {
  cleave::data_version v;
  v.words[2] = n;
  return v;
}

// The answer cache gives an answer only for its target, token and data version, with the bytes
// the server would send, and stays within its bounds: answers of older data make room first, and
// what does not fit is not kept.
TEST(answer_cache, gives_an_answer_only_for_its_target_token_and_data_and_stays_bounded) {
  using cleave::http::detail::answer_cache;
  using cleave::http::detail::response;
  answer_cache cache;
  const response ok{200,
                    "application/json",
                    R"({"result":1})",
                    {{"Cleave-Position", "0.7.0"}, {"X-Correlation-Id", "abc"}}};
  cache.keep("/queries/q?a=1", "Bearer t", "q", ok, version_of(1), version_of(1));
  auto hit = cache.find("/queries/q?a=1", "Bearer t", version_of(1));
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->query, "q");
  EXPECT_EQ(hit->head + "xyz" + hit->tail,
            "HTTP/1.1 200 OK\r\nServer: cleave\r\nContent-Type: application/json\r\n"
            "Cleave-Position: 0.7.0\r\nX-Correlation-Id: xyz\r\nContent-Length: 12\r\n\r\n"
            R"({"result":1})");
  EXPECT_FALSE(cache.find("/queries/q?a=1", "Bearer t", version_of(2)));
  EXPECT_FALSE(cache.find("/queries/q?a=1", "Bearer u", version_of(1)));
  EXPECT_FALSE(cache.find("/queries/q?a=1", "", version_of(1)));
  EXPECT_FALSE(cache.find("/queries/q?a=2", "Bearer t", version_of(1)));
  // Only 200s, and no body over the limit.
  cache.keep("/queries/q?a=3", "", "q", response{404, "application/problem+json", "{}", {}},
             version_of(1), version_of(1));
  cache.keep(
      "/queries/q?a=4", "", "q",
      response{200, "application/json", std::string(answer_cache::largest_body + 1, 'x'), {}},
      version_of(1), version_of(1));
  EXPECT_EQ(cache.size(), 1u);
  // Full of answers of the current data: a new one takes the place of another; once the data
  // moved on, the old ones make room all at once.
  for (std::size_t i = 0; cache.size() < answer_cache::most_answers; ++i)
    cache.keep("/queries/q?n=" + std::to_string(i), "", "q", ok, version_of(1), version_of(1));
  cache.keep("/queries/q?late", "", "q", ok, version_of(1), version_of(1));
  EXPECT_TRUE(cache.find("/queries/q?late", "", version_of(1)));
  EXPECT_EQ(cache.size(), answer_cache::most_answers);
  cache.keep("/queries/q?later", "", "q", ok, version_of(2), version_of(2));
  EXPECT_TRUE(cache.find("/queries/q?later", "", version_of(2)));
  EXPECT_EQ(cache.size(), 1u);
  // Bytes are bounded too: 64 KB answers fill it long before it holds most_answers of them.
  const response big{200, "application/json", std::string(answer_cache::largest_body, 'x'), {}};
  for (int i = 0; i < 1000; ++i)
    cache.keep("/queries/q?big=" + std::to_string(i), "", "q", big, version_of(2), version_of(2));
  EXPECT_LT(cache.size(), answer_cache::most_bytes / answer_cache::largest_body + 2);
  EXPECT_GT(cache.size(), answer_cache::most_bytes / answer_cache::largest_body / 2);
}

}  // namespace
