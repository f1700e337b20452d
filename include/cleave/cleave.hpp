#pragma once
// Everything a cleave application includes.

#include <cleave/core/behavior.hpp>
#include <cleave/core/bus.hpp>
#include <cleave/core/context.hpp>
#include <cleave/core/error.hpp>
#include <cleave/core/json.hpp>
#include <cleave/core/message.hpp>
#include <cleave/core/position.hpp>
#include <cleave/core/session.hpp>
