# cmake -P script run by ctest (see CMakeLists.txt): install, then build two consumers and run
# them. A consumer exits 77 when userfaultfd is unavailable; this script then prints
# "dsm consumer skipped", which ctest reports as a skip.
foreach(v BUILD_DIR WORK_DIR CONSUMER_SRC CXX LIBDIR)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "install_test.cmake: ${v} is not set")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}\n${out}\n${err}")
  endif()
  set(run_out "${out}" PARENT_SCOPE)
endfunction()

# run_consumer(<what> <binary>): runs a built consumer; it must print "dsm consumer ok".
function(run_consumer what binary)
  execute_process(COMMAND ${binary} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 77)
    message(STATUS "dsm consumer skipped (${what}): ${out}")
    return()
  endif()
  if(NOT rc EQUAL 0 OR NOT out MATCHES "dsm consumer ok")
    message(FATAL_ERROR "${what} consumer failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "${what} consumer:\n${out}")
endfunction()

set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

message(STATUS "installing ${BUILD_DIR} into ${prefix}")
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(f include/dsm/node.h ${LIBDIR}/cmake/dsm/dsmConfig.cmake
          ${LIBDIR}/cmake/dsm/dsmConfigVersion.cmake ${LIBDIR}/cmake/dsm/dsmTargets.cmake
          ${LIBDIR}/pkgconfig/dsm.pc)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()

# 1. CMake: find_package(dsm CONFIG REQUIRED) + dsm::dsm.
set(gen_args)
if(GENERATOR)
  set(gen_args -G ${GENERATOR})
endif()
run(${CMAKE_COMMAND} -S ${CONSUMER_SRC} -B ${WORK_DIR}/cmake-build ${gen_args}
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX}
    "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}")
run(${CMAKE_COMMAND} --build ${WORK_DIR}/cmake-build)
run_consumer(find_package ${WORK_DIR}/cmake-build/dsm_consumer)

# 2. pkg-config: c++ -std=c++17 main.cc $(pkg-config --cflags --libs dsm).
find_program(PKG_CONFIG pkg-config REQUIRED)
set(ENV{PKG_CONFIG_PATH} ${prefix}/${LIBDIR}/pkgconfig)
run(${PKG_CONFIG} --cflags --libs dsm)
string(STRIP "${run_out}" pc_flags)
message(STATUS "pkg-config --cflags --libs dsm: ${pc_flags}")
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
separate_arguments(extra UNIX_COMMAND "${CXX_FLAGS} ${LINKER_FLAGS}")
run(${CXX} -std=c++17 -Wall -Wextra -Wpedantic -Werror ${extra} ${CONSUMER_SRC}/main.cc
    ${pc_flags} -o ${WORK_DIR}/pc_consumer)
run_consumer(pkg-config ${WORK_DIR}/pc_consumer)
