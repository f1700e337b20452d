// The inbox: a durable JetStream pull consumer whose messages become commands of the app, each
// with the message's id as its command id, acknowledged once the outcome is known.

#include <cleave/nats/nats.hpp>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cleave/core/detail/schedules.hpp>
#include <cleave/store/detail/scopes.hpp>

#include "client.hpp"

namespace cleave::nats {

namespace {

constexpr migration inbox_schema[] = {
    {1, "inbox dead letters",
     "create table cleave_inbox_dead_letters(stream text not null, consumer text not null,"
     "  message_id text not null, subject text not null, payload text not null,"
     "  error text not null, recorded_ms bigint not null, replays bigint not null default 0,"
     "  primary key (stream, consumer, message_id))"},
};

struct dead_row {
  std::string message_id, subject, payload, error;
  std::int64_t replays = 0;
};
CLEAVE_RECORD(dead_row, message_id, subject, payload, error, replays)

// Whether a failed send is the command's answer (kept as a dead letter), not a failure of the
// moment (the message is redelivered).
bool refused(errc c) {
  return c == errc::rejected || c == errc::validation || c == errc::not_found ||
         c == errc::unauthorized || c == errc::forbidden || c == errc::idempotency_key_reused;
}

}  // namespace

struct inbox::impl {
  app& a;
  inbox_options o;
  std::atomic<bool> stopping{false};
  std::unique_ptr<detail::client> client;
  natsSubscription* sub = nullptr;
  int failures = 0;
  std::int64_t created = 0;  // when the stream was made: a message without an id is seq@created

  impl(app& owner, inbox_options options) : a(owner), o(std::move(options)) {}
  ~impl() { disconnect(); }

  void disconnect() {
    if (sub) natsSubscription_Destroy(sub);
    sub = nullptr;
    client.reset();
  }

  void connect() {
    client = std::make_unique<detail::client>(o.url, o.request_timeout);
    jsErrCode code{};
    make_stream(code);
    jsConsumerInfo* info = nullptr;
    auto s = js_GetConsumerInfo(&info, client->js(), o.stream.c_str(), o.consumer.c_str(), nullptr,
                                &code);
    if (s == NATS_NOT_FOUND) {
      jsConsumerConfig cc;
      jsConsumerConfig_Init(&cc);
      cc.Durable = o.consumer.c_str();
      cc.AckPolicy = js_AckExplicit;
      cc.DeliverPolicy = js_DeliverAll;
      cc.AckWait = std::chrono::duration_cast<std::chrono::nanoseconds>(o.ack_wait).count();
      s = js_AddConsumer(&info, client->js(), o.stream.c_str(), &cc, nullptr, &code);
    }
    detail::check(s, fmt::format("consumer {} of stream {}", o.consumer, o.stream));
    jsConsumerInfo_Destroy(info);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = o.stream.c_str();
    so.Consumer = o.consumer.c_str();
    detail::check(js_PullSubscribe(&sub, client->js(), "", o.consumer.c_str(), nullptr, &so, &code),
                  "subscribing");
  }

  void make_stream(jsErrCode& code) {
    jsStreamInfo* info = nullptr;
    auto s = js_GetStreamInfo(&info, client->js(), o.stream.c_str(), nullptr, &code);
    if (s == NATS_NOT_FOUND) {
      std::vector<const char*> subjects;
      subjects.reserve(o.routes.size());
      for (const auto& [subject, command] : o.routes) subjects.push_back(subject.c_str());
      jsStreamConfig cfg;
      jsStreamConfig_Init(&cfg);
      cfg.Name = o.stream.c_str();
      cfg.Subjects = subjects.data();
      cfg.SubjectsLen = static_cast<int>(subjects.size());
      s = js_AddStream(&info, client->js(), &cfg, nullptr, &code);
    }
    detail::check(s, fmt::format("stream {}", o.stream));
    created = info->Created;
    jsStreamInfo_Destroy(info);
  }

  // The message's id: its Nats-Msg-Id, else its place in the stream.
  std::string id_of(natsMsg* m) const {
    const char* id = nullptr;
    if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id && *id) return id;
    jsMsgMetaData* meta = nullptr;
    std::string out = "seq:?";
    if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
      out = fmt::format("seq:{}@{}", meta->Sequence.Stream, created);
      jsMsgMetaData_Destroy(meta);
    }
    return out;
  }

  // Sends the command a message stands for; the outcome, or the reason it cannot be sent.
  result<json_outcome> send(const std::string& subject, const std::string& payload,
                            const std::string& command_id) {
    const auto route = o.routes.find(subject);
    if (route == o.routes.end())
      return std::unexpected(
          error{errc::not_found, fmt::format("no route for subject '{}'", subject), {}});
    auto body = parse_json(payload);
    if (!body) return std::unexpected(body.error());
    request_meta meta;
    meta.command_id = command_id;
    meta.correlation_id = command_id;
    meta.principal = o.runs_as;
    meta.deadline = clock::now() + o.request_timeout;
    return a.commands().send_json(route->second, *body, meta);
  }

  std::string command_id_of(const std::string& message_id) const {
    return fmt::format("@nats {}/{}", o.stream, message_id);
  }

  void park(const std::string& id, const std::string& subject, const std::string& payload,
            const error& why) {
    spdlog::warn("inbox {}: message {} on {} parked: {}", o.consumer, id, subject, why.describe());
    cleave::detail::writing(a.store(), [&](write_transaction&, write_context& tx) {
      tx.exec(
          "insert into cleave_inbox_dead_letters(stream, consumer, message_id, subject, payload, "
          "error, recorded_ms) values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing",
          o.stream, o.consumer, id, subject, payload, why.message, cleave::detail::unix_now_ms());
      return true;
    });
  }

  // Handles one message; acknowledged (true), or nak'ed for redelivery (false) when its command
  // failed for a reason of the moment.
  bool handle(natsMsg* m) {
    const std::string id = id_of(m);
    const std::string subject = natsMsg_GetSubject(m);
    const std::string payload(natsMsg_GetData(m),
                              static_cast<std::size_t>(natsMsg_GetDataLength(m)));
    const auto outcome = send(subject, payload, command_id_of(id));
    if (!outcome && !refused(outcome.error().category)) {
      spdlog::warn("inbox {}: message {}: {}; redelivered later", o.consumer, id,
                   outcome.error().describe());
      natsMsg_NakWithDelay(m, 1000, nullptr);
      return false;
    }
    if (!outcome) park(id, subject, payload, outcome.error());
    detail::check(natsMsg_AckSync(m, nullptr, nullptr), "acknowledging");
    return true;
  }

  // Sleeps `how_long`, or less when stop() is called.
  void pause(std::chrono::milliseconds how_long) const {
    const auto until = clock::now() + how_long;
    while (!stopping && clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  std::size_t run(bool until_idle) {
    std::size_t handled = 0;
    while (!stopping) {
      try {
        if (!client) connect();
        natsMsgList list{};
        const auto s = natsSubscription_Fetch(&list, sub, static_cast<int>(o.batch),
                                              until_idle ? 500 : 1000, nullptr);
        if (s == NATS_TIMEOUT) {
          natsMsgList_Destroy(&list);
          if (until_idle) return handled;
          continue;
        }
        detail::check(s, "fetching");
        try {
          // In order: after a message that must wait, the rest of the batch waits too (a later
          // message may depend on it).
          int i = 0;
          for (; i < list.Count && handle(list.Msgs[i]); ++i) ++handled;
          for (int rest = i + 1; rest < list.Count; ++rest)
            natsMsg_NakWithDelay(list.Msgs[rest], 1000, nullptr);
          if (i < list.Count)
            pause(detail::backoff(failures++, o.max_backoff));
          else
            failures = 0;
        } catch (...) {
          natsMsgList_Destroy(&list);
          throw;
        }
        natsMsgList_Destroy(&list);
      } catch (const std::exception& e) {
        disconnect();
        const auto backoff = detail::backoff(failures, o.max_backoff);
        ++failures;
        spdlog::warn("inbox {}: {}; trying again in {} ms", o.consumer, e.what(), backoff.count());
        pause(backoff);
      }
    }
    return handled;
  }
};

inbox::inbox(app& a, inbox_options options) : impl_(std::make_unique<impl>(a, std::move(options))) {
  a.store().migrate("cleave.inbox", inbox_schema);
}
inbox::~inbox() = default;

std::size_t inbox::run(bool until_idle) {
  return impl_->run(until_idle);
}
void inbox::stop() {
  impl_->stopping = true;
}

std::vector<inbox::dead_letter> inbox::dead_letters() const {
  return cleave::detail::reading(impl_->a.store(), [&](read_context& ctx) {
    std::vector<dead_letter> out;
    for (auto& r : ctx.many<dead_row>(
             "select message_id, subject, payload, error, replays from cleave_inbox_dead_letters "
             "where stream = $1 and consumer = $2 order by recorded_ms, message_id",
             impl_->o.stream, impl_->o.consumer))
      out.push_back({std::move(r.message_id), std::move(r.subject), std::move(r.payload),
                     std::move(r.error), r.replays});
    return out;
  });
}

std::size_t inbox::replay_dead_letters() {
  std::size_t done = 0;
  auto& in = *impl_;
  const auto update = [&](std::string_view sql, const dead_letter& d) {
    cleave::detail::writing(in.a.store(), [&](write_transaction&, write_context& tx) {
      tx.exec(sql, in.o.stream, in.o.consumer, d.message_id);
      return true;
    });
  };
  for (const auto& d : dead_letters()) {
    // Replay n has an id of its own (the first refusal is remembered under the message's id), the
    // same however often it is tried: one that ran before a crash is not run twice.
    const auto id = fmt::format("{}~{}", in.command_id_of(d.message_id), d.replays + 1);
    constexpr std::string_view where = "where stream = $1 and consumer = $2 and message_id = $3";
    if (const auto outcome = in.send(d.subject, d.payload, id); outcome) {
      update(fmt::format("delete from cleave_inbox_dead_letters {}", where), d);
      ++done;
    } else if (refused(outcome.error().category)) {
      update(fmt::format("update cleave_inbox_dead_letters set replays = replays + 1 {}", where),
             d);
    }
  }
  return done;
}

namespace {
json dead_letters_json(const inbox& in) {
  json out = json::array();
  for (const auto& d : in.dead_letters())
    out.push_back({{"message_id", d.message_id},
                   {"subject", d.subject},
                   {"payload", d.payload},
                   {"error", d.error},
                   {"replays", d.replays}});
  return out;
}
}  // namespace

void add_inbox(app& a, const inbox_options& options) {
  // For the admin API: reads and replays need no connection to the broker.
  auto shared = std::make_shared<inbox>(a, options);
  a.add_inbox_source(options.stream + ":" + options.consumer,
                     {[shared] { return dead_letters_json(*shared); },
                      [shared] { return shared->replay_dead_letters(); }});
  a.add_verb(
      "inbox",
      "inbox run | dead-letters | replay\n"
      "                      take commands from NATS JetStream until SIGINT/SIGTERM; list the\n"
      "                      messages whose command was refused; send those again",
      [options](app& self, std::span<const std::string> args) {
        const std::string what = args.empty() ? "" : args.front();
        if ((what != "run" && what != "dead-letters" && what != "replay") || args.size() != 1) {
          std::cerr << "error: usage: inbox run | dead-letters | replay" << std::endl;
          return 2;
        }
        self.migrate();
        inbox in(self, options);
        if (what == "dead-letters") {
          std::cout << dead_letters_json(in).dump(2) << std::endl;
          return 0;
        }
        if (what == "replay") {
          std::cout << json{{"replayed", in.replay_dead_letters()},
                            {"still_parked", in.dead_letters().size()}}
                           .dump(2)
                    << std::endl;
          return 0;
        }
        block_stop_signals();
        std::thread runner([&] { in.run(); });
        std::cout << "inbox: consuming stream " << options.stream << " as " << options.consumer
                  << std::endl;
        wait_for_stop_signal();
        in.stop();
        runner.join();
        return 0;
      });
}

}  // namespace cleave::nats
