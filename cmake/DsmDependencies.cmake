# Every dependency comes from Debian 12 packages (see .ci/run and scripts/setup.sh).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing>=2.0)
# RDMA (TransportKind::kRdma) needs libibverbs (rdma-core); on by default where it is found.
# Off: libdsm neither needs nor links libibverbs, and a node asked for kRdma fails to start
# with an error that says this build has no RDMA.
pkg_check_modules(IBVERBS QUIET IMPORTED_TARGET libibverbs)
option(DSM_WITH_RDMA "Build the RDMA transport (needs libibverbs)" ${IBVERBS_FOUND})
if(DSM_WITH_RDMA AND NOT IBVERBS_FOUND)
  message(FATAL_ERROR "DSM_WITH_RDMA is ON but libibverbs was not found through pkg-config "
                      "(Debian: apt-get install libibverbs-dev), or configure with -DDSM_WITH_RDMA=OFF")
endif()
# The targets that use libibverbs directly get DSM_WITH_RDMA=0/1 (DSM_RDMA_DEFINITION).
if(DSM_WITH_RDMA)
  set(DSM_IBVERBS PkgConfig::IBVERBS)
  set(DSM_RDMA_DEFINITION DSM_WITH_RDMA=1)
else()
  set(DSM_IBVERBS "")
  set(DSM_RDMA_DEFINITION DSM_WITH_RDMA=0)
endif()
message(STATUS "dsm: RDMA transport ${DSM_WITH_RDMA}")
find_package(OpenSSL 3.0 REQUIRED COMPONENTS Crypto)  # libssl-dev: HMAC-SHA256 admission
if(DSM_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
endif()
if(DSM_BUILD_BENCH)
  find_package(benchmark CONFIG REQUIRED)
endif()
