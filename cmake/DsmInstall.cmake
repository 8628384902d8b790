# Installation: headers, libdsm.so (SONAME libdsm.so.<major>.<minor>), the dsm::dsm export
# (dsmConfig.cmake + version), dsm.pc, and dsm_info (what this host supports).
#
#   cmake --install build --prefix /opt/dsm
#   find_package(dsm CONFIG REQUIRED)        # CMAKE_PREFIX_PATH=/opt/dsm
#   target_link_libraries(app PRIVATE dsm::dsm)
#   pkg-config --cflags --libs dsm           # PKG_CONFIG_PATH=/opt/dsm/lib/pkgconfig
#
# Both the CMake package and dsm.pc are relocatable: they find their prefix from where they
# were installed, so `cmake --install --prefix` anywhere works.
include(CMakePackageConfigHelpers)

set(DSM_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/dsm" CACHE STRING
    "Where dsmConfig.cmake goes, relative to the prefix")

install(TARGETS dsm_shared EXPORT dsmTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
if(TARGET dsm_info)
  install(TARGETS dsm_info RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
# (the include directory comes from dsm's $<INSTALL_INTERFACE:...> in lib/CMakeLists.txt)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/dsm
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_BINARY_DIR}/include/dsm/version.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/dsm)
install(EXPORT dsmTargets
  NAMESPACE dsm::
  FILE dsmTargets.cmake
  DESTINATION ${DSM_INSTALL_CMAKEDIR})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/dsmConfig.cmake.in
  ${PROJECT_BINARY_DIR}/dsmConfig.cmake
  INSTALL_DESTINATION ${DSM_INSTALL_CMAKEDIR})
# 0.x: minor versions may break the API.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/dsmConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/dsmConfig.cmake ${PROJECT_BINARY_DIR}/dsmConfigVersion.cmake
  DESTINATION ${DSM_INSTALL_CMAKEDIR})

# dsm.pc. The public headers use abseil types, so abseil is in Requires. liburing, libibverbs
# and libcrypto are linked privately into libdsm.so: Requires.private (what a static link of
# its dependencies would need), never on a consumer's own link line.
set(DSM_PC_REQUIRES
  "absl_status absl_statusor absl_time absl_strings absl_synchronization absl_span absl_flat_hash_map absl_flat_hash_set absl_str_format")
set(DSM_PC_REQUIRES_PRIVATE "liburing libcrypto")
if(DSM_WITH_RDMA)
  string(APPEND DSM_PC_REQUIRES_PRIVATE " libibverbs")
endif()
set(DSM_PC_LIBS_EXTRA "")
set(DSM_PC_LIBS_PRIVATE "-pthread")
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(DSM_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(DSM_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  file(RELATIVE_PATH _dsm_pc_up "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
  string(REGEX REPLACE "/$" "" _dsm_pc_up "${_dsm_pc_up}")
  set(DSM_PC_PREFIX "\${pcfiledir}/${_dsm_pc_up}")
  set(DSM_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(DSM_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(DSM_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/dsm.pc.in ${PROJECT_BINARY_DIR}/dsm.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/dsm.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
