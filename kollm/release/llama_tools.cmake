# kollm's build of llama.cpp's llama-imatrix and llama-quantize (see kollm/release/llama_tools.py).
#
# Copied as CMakeLists.txt into a directory holding the llama.cpp sources of the installed llama-cpp-python's
# sdist (only common/, vendor/, tools/imatrix, tools/quantize, headers and CMake helpers). Instead of compiling
# ggml and libllama again, the tools link against the shared libraries llama-cpp-python already built from
# those same sources, copied into LLAMA_LIB beside the binaries: only llama.cpp's `common` library and the two
# tools are compiled.
cmake_minimum_required(VERSION 3.14)
project(kollm_llama_tools C CXX)

if(NOT LLAMA_LIB)
    message(FATAL_ERROR "pass -DLLAMA_LIB=<directory with libllama and libggml*>")
endif()

include(cmake/license.cmake)
include(cmake/common.cmake)
find_package(Threads REQUIRED)

# What llama.cpp's top-level CMakeLists.txt would set for common/ (build-info.cpp and the library version).
set(LLAMA_VERSION_MAJOR 0)
set(LLAMA_VERSION_BASE "0.0.0")
set(LLAMA_BUILD_NUMBER 0)
set(LLAMA_BUILD_COMMIT "${KOLLM_LLAMA_ORIGIN}")
set(BUILD_COMPILER "${CMAKE_C_COMPILER_ID} ${CMAKE_C_COMPILER_VERSION}")
set(BUILD_TARGET "${CMAKE_SYSTEM_NAME} ${CMAKE_SYSTEM_PROCESSOR}")
set(LLAMA_BUILD_COMMON ON)
set(LLAMA_SUBPROCESS OFF)
set(BUILD_SHARED_LIBS OFF)

foreach(lib ggml-base ggml llama)
    add_library(${lib} SHARED IMPORTED GLOBAL)
    set_target_properties(${lib} PROPERTIES IMPORTED_LOCATION
        "${LLAMA_LIB}/${CMAKE_SHARED_LIBRARY_PREFIX}${lib}${CMAKE_SHARED_LIBRARY_SUFFIX}")
endforeach()
set_target_properties(ggml PROPERTIES
    INTERFACE_LINK_LIBRARIES ggml-base
    INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_SOURCE_DIR}/ggml/include")
set_target_properties(llama PROPERTIES
    INTERFACE_LINK_LIBRARIES ggml
    INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_SOURCE_DIR}/include")

# The binaries find the copied libraries in ../lib wherever the cache directory ends up, and nothing else: no
# absolute path of the temporary build directory is baked in.
set(CMAKE_BUILD_WITH_INSTALL_RPATH ON)
if(APPLE)
    set(CMAKE_INSTALL_RPATH "@loader_path/../lib")
else()
    set(CMAKE_INSTALL_RPATH "$ORIGIN/../lib")
endif()

set(CMAKE_RUNTIME_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/bin")

add_subdirectory(vendor/nlohmann)
add_subdirectory(vendor/sheredom)
add_subdirectory(vendor/cpp-httplib)
add_subdirectory(common)
add_subdirectory(tools/imatrix)
add_subdirectory(tools/quantize)

# common/ (argument parsing, chat templates, HTTP) is most of the compile time and none of the hot path, which
# is in libllama/libggml (prebuilt) and the tools themselves: -O1 there took the build from 404 s to 323 s on 2 cores.
if(NOT MSVC)
    target_compile_options(llama-common PRIVATE -O1)
    target_compile_options(cpp-httplib PRIVATE -O1)
endif()
