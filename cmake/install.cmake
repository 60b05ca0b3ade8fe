# `cmake --install`: the two libraries, their headers, the dagr command when it
# is built, dagrConfig.cmake (+ version file) with the targets dagr::comm and
# dagr::dagr, and dagr-comm.pc for the core.
include(CMakePackageConfigHelpers)
set(DAGR_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/dagr)

install(TARGETS dagr_comm dagr_lib EXPORT dagrTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
if(DAGR_BUILD_CLI)
  install(TARGETS dagr RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# Headers: only those of what was built.
set(dagr_header_excludes)
if(NOT DAGR_WITH_TORCH)
  list(APPEND dagr_header_excludes PATTERN torch EXCLUDE PATTERN models EXCLUDE PATTERN parallel EXCLUDE
    PATTERN fashion_mnist.h EXCLUDE PATTERN ddp.h EXCLUDE PATTERN checkpoint.h EXCLUDE
    PATTERN compute_threads.h EXCLUDE)
endif()
if(NOT MPI_C_FOUND)
  list(APPEND dagr_header_excludes PATTERN mpi.h EXCLUDE)
endif()
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/dagr DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN *.h ${dagr_header_excludes})

install(EXPORT dagrTargets NAMESPACE dagr:: DESTINATION ${DAGR_CMAKE_DIR})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/dagrConfig.cmake.in
  ${PROJECT_BINARY_DIR}/dagrConfig.cmake INSTALL_DESTINATION ${DAGR_CMAKE_DIR})
# 0.x: a new minor version may change the API.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/dagrConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/dagrConfig.cmake ${PROJECT_BINARY_DIR}/dagrConfigVersion.cmake
  DESTINATION ${DAGR_CMAKE_DIR})

# dagr-comm.pc: what a non-CMake build needs for the core. Its own
# dependencies go to Libs when the library is static (the linker needs them
# there), to Libs.private when it is shared.
set(dagr_pc_cflags "-DOMPI_SKIP_MPICXX -DMPICH_SKIP_MPICXX")
set(dagr_pc_deps "-pthread -lrt ${SODIUM_LIBRARY} ${CRYPTO_LIBRARY}")
if(MPI_C_FOUND)
  foreach(dir IN LISTS MPI_C_INCLUDE_DIRS)
    string(APPEND dagr_pc_cflags " -I${dir}")
  endforeach()
  foreach(lib IN LISTS MPI_C_LIBRARIES)
    string(APPEND dagr_pc_deps " ${lib}")
  endforeach()
endif()
set(dagr_pc_requires "")
if(spdlog_FOUND)
  set(dagr_pc_requires "spdlog")
endif()
if(BUILD_SHARED_LIBS)
  set(dagr_pc_requires "Requires.private: ${dagr_pc_requires}")
  set(dagr_pc_libs "")
  set(dagr_pc_libs_private "Libs.private: ${dagr_pc_deps}")
else()
  set(dagr_pc_requires "Requires: ${dagr_pc_requires}")
  set(dagr_pc_libs " ${dagr_pc_deps}")
  set(dagr_pc_libs_private "")
endif()
# The file finds the prefix from its own place (${pcfiledir}/<this>).
file(RELATIVE_PATH dagr_pc_to_prefix /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
string(REGEX REPLACE "/$" "" dagr_pc_to_prefix "${dagr_pc_to_prefix}")
configure_file(${CMAKE_CURRENT_LIST_DIR}/dagr-comm.pc.in ${PROJECT_BINARY_DIR}/dagr-comm.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/dagr-comm.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
