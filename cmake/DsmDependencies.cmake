# Every dependency comes from Debian 12 packages (see .ci/run and scripts/setup.sh).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing>=2.0)
pkg_check_modules(IBVERBS REQUIRED IMPORTED_TARGET libibverbs)
find_package(OpenSSL 3.0 REQUIRED COMPONENTS Crypto)  # libssl-dev: HMAC-SHA256 admission
if(DSM_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
endif()
if(DSM_BUILD_BENCH)
  find_package(benchmark CONFIG REQUIRED)
endif()
