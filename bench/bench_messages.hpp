#pragma once
// The command and event the write and read benchmarks both use: an item placed on a stream.

#include <cstdint>
#include <string>

#include <cleave/core/message.hpp>

namespace bench {

struct place_item {
  std::string id;
  std::int64_t quantity = 0;
};
CLEAVE_COMMAND(place_item, "bench.place_item", id, quantity)

struct item_placed {
  std::string id;
  std::int64_t quantity = 0;
};
CLEAVE_EVENT(item_placed, "bench.item_placed", id, quantity)

// Another event on the same streams, for a log of more than one type.
struct item_viewed {
  std::string id;
};
CLEAVE_EVENT(item_viewed, "bench.item_viewed", id)

}  // namespace bench
