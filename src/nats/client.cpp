// The NATS client's connection and JetStream context, owned.

#include "client.hpp"

#include <fmt/format.h>

namespace cleave::nats::detail {

void check(natsStatus s, std::string_view what) {
  if (s == NATS_OK) return;
  const char* last = nats_GetLastError(nullptr);
  throw error_exception({errc::unavailable,
                         fmt::format("NATS: {}: {}", what, last ? last : natsStatus_GetText(s)),
                         {}});
}

client::client(const std::string& url, std::chrono::milliseconds timeout) {
  natsOptions* opts = nullptr;
  check(natsOptions_Create(&opts), "options");
  const std::unique_ptr<natsOptions, void (*)(natsOptions*)> owned(opts, natsOptions_Destroy);
  check(natsOptions_SetURL(opts, url.c_str()), "url");
  check(natsOptions_SetTimeout(opts, static_cast<std::int64_t>(timeout.count())), "timeout");
  check(natsOptions_SetAllowReconnect(opts, false), "reconnect");
  check(natsConnection_Connect(&nc_, opts), fmt::format("connecting to {}", url));
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = static_cast<std::int64_t>(timeout.count());
  jo.PublishAsync.ErrHandler = &client::on_publish_error;
  jo.PublishAsync.ErrHandlerClosure = this;
  jo.PublishAsync.MaxPending = 8192;
  if (const auto s = natsConnection_JetStream(&js_, nc_, &jo); s != NATS_OK) {
    natsConnection_Destroy(nc_);
    check(s, "JetStream");
  }
}

client::~client() {
  jsCtx_Destroy(js_);
  natsConnection_Close(nc_);
  natsConnection_Destroy(nc_);
}

void client::on_publish_error(jsCtx*, jsPubAckErr* pae, void* closure) {
  auto* self = static_cast<client*>(closure);
  std::lock_guard lock(self->failure_mutex_);
  if (!self->failure_)
    self->failure_ = pae->ErrText ? std::string(pae->ErrText) : natsStatus_GetText(pae->Err);
}

std::optional<std::string> client::take_failure() {
  std::lock_guard lock(failure_mutex_);
  return std::exchange(failure_, std::nullopt);
}

}  // namespace cleave::nats::detail
