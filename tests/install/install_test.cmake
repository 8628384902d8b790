# cmake -P script run by ctest (see CMakeLists.txt): install, check the shared library (its
# SONAME, that it exports the public API only, that no static libdsm is installed), then build
# two consumers against it, run them, and check they do not link the I/O libraries themselves. A consumer exits 77 when userfaultfd is unavailable; this script then prints
# "dsm consumer skipped", which ctest reports as a skip.
foreach(v BUILD_DIR WORK_DIR CONSUMER_SRC CXX LIBDIR SOVERSION)
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
          ${LIBDIR}/pkgconfig/dsm.pc ${LIBDIR}/libdsm.so ${LIBDIR}/libdsm.so.${SOVERSION}
          bin/dsm_info)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()
if(EXISTS ${prefix}/${LIBDIR}/libdsm.a)
  message(FATAL_ERROR "libdsm.a is installed: only the shared library is meant to be")
endif()
set(lib ${prefix}/${LIBDIR}/libdsm.so)

# The SONAME names major.minor (before 1.0 a minor version may change the ABI).
find_program(READELF readelf REQUIRED)
run(${READELF} -d ${lib})
if(NOT run_out MATCHES "Library soname: \\[libdsm\\.so\\.${SOVERSION}\\]")
  message(FATAL_ERROR "libdsm.so's SONAME is not libdsm.so.${SOVERSION}:\n${run_out}")
endif()

# Exported: the public namespace only (and the linker's own symbols).
find_program(NM nm REQUIRED)
run(${NM} -D --defined-only -C ${lib})
string(REPLACE "\n" ";" exported "${run_out}")
set(public 0)
set(leaked "")
foreach(line IN LISTS exported)
  if(line STREQUAL "")
    continue()
  endif()
  if(line MATCHES "dsm::v[0-9]+_[0-9]+::")
    math(EXPR public "${public} + 1")
  elseif(NOT line MATCHES " (_init|_fini|_edata|_end|__bss_start)$")
    string(APPEND leaked "\n  ${line}")
  endif()
endforeach()
if(NOT leaked STREQUAL "")
  message(FATAL_ERROR "libdsm.so exports symbols outside the public namespace:${leaked}")
endif()
if(public LESS 20)
  message(FATAL_ERROR "libdsm.so exports only ${public} public symbols:\n${run_out}")
endif()
message(STATUS "libdsm.so exports ${public} symbols, all in the public namespace")

# checks_private_io(<binary>): links libdsm, and none of liburing, libibverbs, libcrypto.
function(check_private_io binary)
  execute_process(COMMAND ${READELF} -d ${binary} OUTPUT_VARIABLE dyn)
  if(NOT dyn MATCHES "libdsm\\.so\\.${SOVERSION}")
    message(FATAL_ERROR "${binary} does not link libdsm.so.${SOVERSION}:\n${dyn}")
  endif()
  if(dyn MATCHES "liburing|libibverbs|libcrypto")
    message(FATAL_ERROR "${binary} links an I/O library of libdsm's itself:\n${dyn}")
  endif()
endfunction()

# 1. CMake: find_package(dsm CONFIG REQUIRED) + dsm::dsm.
set(gen_args)
if(GENERATOR)
  set(gen_args -G ${GENERATOR})
endif()
run(${CMAKE_COMMAND} -S ${CONSUMER_SRC} -B ${WORK_DIR}/cmake-build ${gen_args}
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX}
    "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}")
run(${CMAKE_COMMAND} --build ${WORK_DIR}/cmake-build)
check_private_io(${WORK_DIR}/cmake-build/dsm_consumer)
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
    ${pc_flags} -Wl,-rpath,${prefix}/${LIBDIR} -o ${WORK_DIR}/pc_consumer)
check_private_io(${WORK_DIR}/pc_consumer)
run_consumer(pkg-config ${WORK_DIR}/pc_consumer)
