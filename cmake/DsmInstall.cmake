# Installation: headers, libdsm, dsmConfig.cmake (+ version), dsm.pc.
# Filled in by the build-infrastructure change.
