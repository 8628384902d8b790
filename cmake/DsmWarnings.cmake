# Warning flags for every dsm target (not for consumers).
add_library(dsm_warnings INTERFACE)
target_compile_options(dsm_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wno-missing-field-initializers
  $<$<BOOL:${DSM_WERROR}>:-Werror>)
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  target_compile_options(dsm_warnings INTERFACE -Wthread-safety -Wno-gnu-zero-variadic-macro-arguments)
endif()
