# cmake -DCOMPILER=c++ -DSOURCE=file.cpp -DINCLUDE=dir -P expect_compile_error.cmake
# Compiles SOURCE (syntax only). A file with "// expect: TEXT" must fail, and the compiler's first
# error must be a static_assert whose message contains TEXT. "// expect-success" must compile.
file(READ "${SOURCE}" text)
execute_process(
  COMMAND "${COMPILER}" -std=c++23 -fsyntax-only -I "${INCLUDE}" "${SOURCE}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(text MATCHES "// expect-success")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "expected to compile, but:\n${err}")
  endif()
  return()
endif()
string(REGEX MATCH "// expect: ([^\n]*)" _ "${text}")
set(expected "${CMAKE_MATCH_1}")
if(expected STREQUAL "")
  message(FATAL_ERROR "${SOURCE} has no '// expect:' line")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "compiled, but must not: ${expected}")
endif()
string(REGEX MATCH "error: [^\n]*" first_error "${err}")
string(FIND "${first_error}" "static assertion failed" is_assert)
string(FIND "${first_error}" "${expected}" has_text)
if(is_assert EQUAL -1 OR has_text EQUAL -1)
  message(FATAL_ERROR "first error is not the expected static_assert.\n"
                      "expected: ${expected}\nfirst error: ${first_error}\n\n${err}")
endif()
message(STATUS "rejected as expected: ${first_error}")
