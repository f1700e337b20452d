# cleave_set_warnings(target): the project's warning flags, as errors when CLEAVE_WERROR is on.
function(cleave_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
    -Wno-sign-conversion -Wnon-virtual-dtor -Wold-style-cast -Woverloaded-virtual)
  if(CLEAVE_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
