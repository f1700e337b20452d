#pragma once
// Asio and Beast, included once the way this toolchain needs: Boost 1.74's awaitable.hpp uses
// std::exchange without including <utility> (g++ 12, C++23). Both are compiled once, in
// asio.cpp (BOOST_ASIO_SEPARATE_COMPILATION / BOOST_BEAST_SEPARATE_COMPILATION).
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
