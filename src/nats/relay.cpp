// The relay: a sink projection that publishes each batch of the log to a JetStream stream,
// chained (each publish expects the one before as the stream's last message) and deduplicated
// (Nats-Msg-Id), and lets the checkpoint move only once every publish is acknowledged.

#include <cleave/nats/nats.hpp>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "client.hpp"

namespace cleave::nats {

namespace {

// What the relay knows across batches: its connection, and the id of the stream's last message
// (which the next publish expects).
class relay_state {
 public:
  explicit relay_state(relay_options o) : o_(std::move(o)) {}

  void publish(std::span<const stored_event> events) {
    if (failures_ > 0) std::this_thread::sleep_until(retry_at_);  // backing off
    try {
      if (!client_) connect();
      send(events);
      failures_ = 0;
    } catch (const std::exception& e) {
      client_.reset();  // what was in flight is unknown: the stream's last id is read again
      const auto backoff = detail::backoff(failures_, o_.max_backoff);
      ++failures_;
      retry_at_ = std::chrono::steady_clock::now() + backoff;
      spdlog::warn("relay {}: {}; trying again in {} ms", o_.name, e.what(), backoff.count());
      throw;
    }
  }

 private:
  void connect() {
    auto c = std::make_unique<detail::client>(o_.url, o_.ack_timeout);
    jsStreamInfo* info = nullptr;
    jsErrCode code{};
    auto s = js_GetStreamInfo(&info, c->js(), o_.stream.c_str(), nullptr, &code);
    if (s == NATS_NOT_FOUND) {
      jsStreamConfig cfg;
      jsStreamConfig_Init(&cfg);
      const std::string subjects = o_.prefix + ".>";
      const char* list[] = {subjects.c_str()};
      cfg.Name = o_.stream.c_str();
      cfg.Subjects = list;
      cfg.SubjectsLen = 1;
      cfg.Storage = js_FileStorage;
      cfg.Duplicates =
          std::chrono::duration_cast<std::chrono::nanoseconds>(o_.duplicate_window).count();
      s = js_AddStream(&info, c->js(), &cfg, nullptr, &code);
    }
    detail::check(s, fmt::format("stream {}", o_.stream));
    last_seq_ = info->State.LastSeq;
    const std::uint64_t first = info->State.FirstSeq;
    jsStreamInfo_Destroy(info);
    held_.reset();
    if (last_seq_ > 0 && last_seq_ >= first) {
      natsMsg* m = nullptr;
      // (Gone when purged or past the stream's age limit: then only the server's duplicate
      // window keeps a republished event out.)
      if (js_GetMsg(&m, c->js(), o_.stream.c_str(), last_seq_, nullptr, &code) == NATS_OK) {
        const char *id = nullptr, *relay = nullptr;
        natsMsgHeader_Get(m, "Nats-Msg-Id", &id);
        natsMsgHeader_Get(m, "Cleave-Relay", &relay);
        const std::string by = relay ? relay : "";
        const std::string last_id = id ? id : "";
        natsMsg_Destroy(m);
        if (by != o_.name)
          throw error_exception(
              {errc::validation,
               fmt::format("stream {} holds messages that relay {} did not publish (the last "
                           "one's Cleave-Relay is '{}'): give the relay a stream of its own",
                           o_.stream, o_.name, by),
               {}});
        held_ = parse_id(last_id);
      }
    }
    client_ = std::move(c);
    spdlog::info("relay {}: publishing to stream {} at {} (its last sequence {})", o_.name,
                 o_.stream, o_.url, last_seq_);
  }

  void send(std::span<const stored_event> events) {
    std::size_t sent = 0;
    for (const auto& e : events) {
      const auto id = message_id(e);
      // Already in the stream (published before a crash, past the duplicate window): skipped.
      if (held_ && !(*held_ < e.position)) continue;
      natsMsg* m = nullptr;
      const auto payload = e.payload.dump();
      const auto subject = subject_of(e.type);
      detail::check(natsMsg_Create(&m, subject.c_str(), nullptr, payload.data(),
                                   static_cast<int>(payload.size())),
                    "message");
      const auto version = std::to_string(e.stream_version);
      const auto recorded = std::to_string(e.recorded_at_ms);
      natsMsgHeader_Set(m, "Cleave-Relay", o_.name.c_str());
      natsMsgHeader_Set(m, "Cleave-Type", e.type.c_str());
      natsMsgHeader_Set(m, "Cleave-Stream", e.stream.c_str());
      natsMsgHeader_Set(m, "Cleave-Stream-Version", version.c_str());
      natsMsgHeader_Set(m, "Cleave-Recorded-At", recorded.c_str());
      if (!e.correlation_id.empty())
        natsMsgHeader_Set(m, "Cleave-Correlation-Id", e.correlation_id.c_str());
      jsPubOptions po;
      jsPubOptions_Init(&po);
      po.MsgId = id.c_str();
      // Stored only right after the one before: nothing lands ahead of a message that was lost.
      // (The stream's sequence, unlike its last message id, survives a restart of the server.)
      po.ExpectLastSeq = last_seq_;
      const auto s = js_PublishMsgAsync(client_->js(), &m, &po);
      if (m) natsMsg_Destroy(m);  // not taken
      detail::check(s, "publishing");
      ++last_seq_;
      ++sent;
    }
    if (sent == 0) return;
    jsPubOptions wait;
    jsPubOptions_Init(&wait);
    wait.MaxWait = static_cast<std::int64_t>(o_.ack_timeout.count());
    detail::check(js_PublishAsyncComplete(client_->js(), &wait), "waiting for acknowledgements");
    if (auto failure = client_->take_failure())
      throw error_exception({errc::unavailable, fmt::format("NATS: publishing: {}", *failure), {}});
    held_.reset();  // everything from here on is new to the stream
  }

  // <prefix>.<type>, with what a subject cannot hold (spaces, wildcards) as '_'.
  std::string subject_of(std::string_view type) const {
    std::string out = o_.prefix + ".";
    for (const char c : type) out += (c == ' ' || c == '*' || c == '>' || c == '\t') ? '_' : c;
    return out;
  }

  static std::optional<position_token> parse_id(std::string_view id) {
    const auto dot = id.find('.');
    if (id.empty() || dot == std::string_view::npos) return std::nullopt;
    std::uint64_t t = 0, p = 0;
    try {
      t = std::stoull(std::string(id.substr(0, dot)), nullptr, 16);
      p = std::stoull(std::string(id.substr(dot + 1)), nullptr, 16);
    } catch (const std::exception&) {
      return std::nullopt;
    }
    return position_token(t, p);
  }

  relay_options o_;
  std::unique_ptr<detail::client> client_;
  std::uint64_t last_seq_ = 0;          // the stream's last sequence, counting what is in flight
  std::optional<position_token> held_;  // after a connect: the last position the stream holds
  int failures_ = 0;
  std::chrono::steady_clock::time_point retry_at_;
};

}  // namespace

std::string message_id(const stored_event& e) {
  return fmt::format("{:x}.{:x}", e.position.transaction(), e.position.position());
}

projection relay(const relay_options& options) {
  projection p(options.name);
  auto state = std::make_shared<relay_state>(options);
  p.sink([state](std::span<const stored_event> events) { state->publish(events); }, options.types)
      .group(options.group)
      .not_rebuildable("its events went to a broker: publishing them again is not a rebuild");
  return p;
}

void add_relay(app& a, const relay_options& options) {
  const auto group = options.group;
  a.add_projection(relay(options));
  a.add_verb("relay",
             "relay               publish the event log to NATS JetStream until SIGINT/SIGTERM\n"
             "                      (one process of several relays; the others stand by)",
             [group](app& self, std::span<const std::string>) {
               block_stop_signals();
               self.migrate();
               self.projections().start({group});
               std::cout << "relaying (group '" << group
                         << "'); the leader publishes, the others stand by" << std::endl;
               wait_for_stop_signal();
               self.projections().stop();
               return 0;
             });
}

}  // namespace cleave::nats
