# cleave_add_library(module SOURCES files... [PUBLIC deps...] [PRIVATE deps...]): the library
# cleave_<module>, known to users as cleave::<module>, with the project's warnings, installed and
# exported with the package.
function(cleave_add_library module)
  cmake_parse_arguments(arg "" "" "SOURCES;PUBLIC;PRIVATE" ${ARGN})
  add_library(cleave_${module} ${arg_SOURCES})
  add_library(cleave::${module} ALIAS cleave_${module})
  set_target_properties(cleave_${module} PROPERTIES EXPORT_NAME ${module} OUTPUT_NAME cleave_${module})
  target_link_libraries(cleave_${module} PUBLIC ${arg_PUBLIC} PRIVATE ${arg_PRIVATE})
  cleave_set_warnings(cleave_${module})
  if(CLEAVE_INSTALL)
    install(TARGETS cleave_${module} EXPORT cleave-targets
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  endif()
endfunction()
