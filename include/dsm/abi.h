// dsm/abi.h: the versioned namespace every public declaration lives in.
//
// Public names are dsm::Node, dsm::Region, ... but are declared inside an inline namespace
// named for the library's ABI version (dsm::v0_1::Node), so an application compiled against
// one version's headers and linked against another version's library fails at link time
// (undefined dsm::v0_1::... symbols) instead of misbehaving at run time. Until 1.0 a minor
// version may change the ABI, so the namespace names major and minor.
//
// Write `DSM_NAMESPACE_BEGIN ... DSM_NAMESPACE_END` around declarations and definitions of
// public names; code that only uses them may say `namespace dsm { ... }` or `dsm::`.
//
// Visibility: libdsm.so is compiled with hidden visibility and exports exactly what is
// declared in this namespace (the attribute below), so the library's internals (namespace
// dsm outside v0_1) are not part of its ABI and cannot clash with an application's symbols.
// dsm/version.h (generated from the build's project version) checks that it agrees.
//
// C++17-clean: included by applications.
#pragma once

#define DSM_ABI_VERSION_MAJOR 0
#define DSM_ABI_VERSION_MINOR 1

#if defined(__GNUC__)
#define DSM_PUBLIC_VISIBILITY __attribute__((visibility("default")))
#else
#define DSM_PUBLIC_VISIBILITY
#endif

#define DSM_NAMESPACE_BEGIN \
  namespace dsm {           \
  inline namespace v0_1 DSM_PUBLIC_VISIBILITY {
#define DSM_NAMESPACE_END \
  }                       \
  }
