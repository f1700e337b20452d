# cleave_add_test(name SOURCES... [LIBS libs...] [LABELS labels...]): a GoogleTest binary run by
# ctest as one test.
function(cleave_add_test name)
  cmake_parse_arguments(arg "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${arg_SOURCES} ${arg_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE ${arg_LIBS} GTest::gtest GTest::gtest_main GTest::gmock)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests/support)
  cleave_set_warnings(${name})
  add_test(NAME ${name} COMMAND ${name})
  if(arg_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${arg_LABELS}")
  endif()
endfunction()

# One throwaway PostgreSQL cluster per ctest run, as a fixture (or the server CLEAVE_TEST_PG_URL
# names). Tests that need it are added with cleave_add_pg_test and find its URL through
# CLEAVE_TEST_PG_URL_FILE.
set(CLEAVE_PG_DIR ${PROJECT_BINARY_DIR}/postgres)
add_test(NAME postgres.start COMMAND ${PROJECT_SOURCE_DIR}/scripts/pg-cluster start ${CLEAVE_PG_DIR})
add_test(NAME postgres.stop COMMAND ${PROJECT_SOURCE_DIR}/scripts/pg-cluster stop ${CLEAVE_PG_DIR})
set_tests_properties(postgres.start PROPERTIES FIXTURES_SETUP postgres LABELS postgres)
set_tests_properties(postgres.stop PROPERTIES FIXTURES_CLEANUP postgres LABELS postgres)

function(cleave_add_pg_test name)
  cmake_parse_arguments(arg "" "" "LABELS" ${ARGN})
  cleave_add_test(${name} ${arg_UNPARSED_ARGUMENTS} LABELS postgres ${arg_LABELS})
  target_link_libraries(${name} PRIVATE PostgreSQL::PostgreSQL)
  # One at a time: the log is read below the oldest transaction running anywhere in the cluster,
  # so one test's deliberately long transaction would hold back another test's readers.
  set_tests_properties(${name} PROPERTIES FIXTURES_REQUIRED postgres RESOURCE_LOCK postgres_cluster
    ENVIRONMENT CLEAVE_TEST_PG_URL_FILE=${CLEAVE_PG_DIR}/url)
endfunction()

# A hot standby of that cluster (pg_basebackup -R), for tests with the label `replica`; they find
# its URL through CLEAVE_TEST_PG_STANDBY_URL_FILE (or CLEAVE_TEST_PG_STANDBY_URL).
set(CLEAVE_PG_STANDBY_DIR ${PROJECT_BINARY_DIR}/postgres-standby)
add_test(NAME postgres.standby.start
  COMMAND ${PROJECT_SOURCE_DIR}/scripts/pg-cluster standby ${CLEAVE_PG_STANDBY_DIR} ${CLEAVE_PG_DIR})
add_test(NAME postgres.standby.stop
  COMMAND ${PROJECT_SOURCE_DIR}/scripts/pg-cluster stop ${CLEAVE_PG_STANDBY_DIR})
set_tests_properties(postgres.standby.start PROPERTIES FIXTURES_SETUP postgres_standby
  FIXTURES_REQUIRED postgres LABELS "postgres;replica")
set_tests_properties(postgres.standby.stop PROPERTIES FIXTURES_CLEANUP postgres_standby
  LABELS "postgres;replica")

function(cleave_add_replica_test name)
  cleave_add_pg_test(${name} ${ARGN} LABELS replica)
  set_tests_properties(${name} PROPERTIES FIXTURES_REQUIRED "postgres;postgres_standby"
    ENVIRONMENT "CLEAVE_TEST_PG_URL_FILE=${CLEAVE_PG_DIR}/url;CLEAVE_TEST_PG_STANDBY_URL_FILE=${CLEAVE_PG_STANDBY_DIR}/url")
endfunction()
