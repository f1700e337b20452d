// shop: the reference application. `shop serve` serves it over HTTP with its web UI; the other
// verbs (`shop send`, `shop ask`, `shop events tail`, `shop status`, `shop migrate`) run its
// handlers directly. Configuration: shop.json (optional) and CLEAVE_* environment variables.

#include <cstdlib>
#include <iostream>

#include <cleave/http/server.hpp>
#include <cleave/nats/nats.hpp>

#include "shop.hpp"

#ifndef SHOP_WEB_DIR
#define SHOP_WEB_DIR "web"
#endif

// With a NATS server configured (settings "nats_url", or SHOP_NATS_URL): the relay publishes
// the shop's events to stream SHOP_EVENTS (subjects shop_events.<type>; `shop relay`), and the
// inbox takes commands from stream SHOP_COMMANDS (`shop inbox run`): a message on
// shop_commands.place_order is a shop.place_order, and so on.
void install_nats(cleave::app& app) {
  const char* env = std::getenv("SHOP_NATS_URL");
  const auto& settings = app.config().settings;
  std::string url = env ? env : "";
  if (url.empty() && settings.contains("nats_url") && settings["nats_url"].is_string())
    url = settings["nats_url"].get<std::string>();
  if (url.empty()) return;
  cleave::nats::relay_options out;
  out.url = url;
  out.stream = "SHOP_EVENTS";
  out.prefix = "shop_events";
  cleave::nats::add_relay(app, out);
  cleave::nats::inbox_options in;
  in.url = url;
  in.stream = "SHOP_COMMANDS";
  in.consumer = "shop";
  for (const char* command : {"place_order", "pay_order", "cancel_order", "restock"})
    in.routes[std::string("shop_commands.") + command] = std::string("shop.") + command;
  cleave::nats::add_inbox(app, in);
}

int main(int argc, char** argv) {
  const char* config_file = std::getenv("SHOP_CONFIG");
  auto config = cleave::load_config(config_file ? config_file : "shop.json");
  if (!config) {
    std::cerr << "error: " << config.error().describe() << std::endl;
    return 2;
  }
  if (config->database == "var/app.db") config->database = "var/shop.db";
  if (config->static_dir.empty()) config->static_dir = SHOP_WEB_DIR;
  try {
    cleave::app app{*config};
    shop::install(app);
    cleave::http::install(app);
    install_nats(app);
    app.migrate();
    shop::seed_demo_data(app);
    return app.main(argc, argv);
  } catch (const cleave::error_exception& e) {
    std::cerr << "error: " << e.error().describe() << std::endl;
    return 1;
  }
}
