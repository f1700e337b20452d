// shop: the reference application. `shop serve` serves it over HTTP with its web UI; the other
// verbs (`shop send`, `shop ask`, `shop events tail`, `shop status`, `shop migrate`) run its
// handlers directly. Configuration: shop.json (optional) and CLEAVE_* environment variables.

#include <cstdlib>
#include <iostream>

#include <cleave/http/server.hpp>

#include "shop.hpp"

#ifndef SHOP_WEB_DIR
#define SHOP_WEB_DIR "web"
#endif

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
    app.migrate();
    shop::seed_demo_data(app);
    return app.main(argc, argv);
  } catch (const cleave::error_exception& e) {
    std::cerr << "error: " << e.error().describe() << std::endl;
    return 1;
  }
}
