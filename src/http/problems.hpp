#pragma once
// Problem metadata in one table: for each HTTP status cleave answers with an RFC 9457 problem,
// its title, the `type` URI each error category gets there, and how /openapi.json describes it.
// The router's problems, the status a bus error gets and the OpenAPI document all read it.

#include <initializer_list>
#include <optional>
#include <span>
#include <string_view>

#include <cleave/core/error.hpp>

namespace cleave::http::detail {

// A problem `type` at one status: the one `category` gets there, or (no category) the one any
// category gets that no other kind of the status names.
struct problem_kind {
  std::optional<errc> category;
  std::string_view type;
};

struct problem_status {
  int status;
  std::string_view title;  // the reason phrase
  // The first kind naming the category wins; the last is for any other. A category named here
  // is answered with this status when a bus refuses with it (see status_of()).
  std::initializer_list<problem_kind> kinds;
  std::string_view name;          // the OpenAPI response, #/components/responses/<name>
  std::string_view description;   // what the OpenAPI document says of it
  std::string_view header;        // a response header it carries, if any
  std::string_view header_value;  // its value, when every problem of the status has the same
};

// Every status a problem is answered with, in ascending order.
std::span<const problem_status> problem_statuses();

// The row of `status`; a status not listed is described as 500 is.
const problem_status& problem_status_of(int status);

// The status that answers an error of `category` (500 for a category no row names).
int status_of(errc category);

}  // namespace cleave::http::detail
