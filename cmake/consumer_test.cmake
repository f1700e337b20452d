# cmake -DMODE=installed|subdirectory -DSOURCE_DIR=.. -DBUILD_DIR=.. -DWORK_DIR=.. -P consumer_test.cmake
# Builds tests/consumer against cleave the way a user would, and runs it.
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed: ${ARGV}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
if(MODE STREQUAL "installed")
  run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/consumer" -B "${WORK_DIR}/build" -G Ninja
      "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
else()
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/consumer" -B "${WORK_DIR}/build" -G Ninja
      "-DCLEAVE_SOURCE_DIR=${SOURCE_DIR}" "-DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER}")
endif()
# Only what the consumer links is built, as in a user's project that builds its own target.
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build" --target consumer)
run("${WORK_DIR}/build/consumer")
