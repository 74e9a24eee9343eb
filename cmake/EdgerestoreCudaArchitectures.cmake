# The CUDA architectures the tile kernels build for by default, from the release of the nvcc
# that compiles them: every toolkit knows its own range of GPUs, and asking nvcc for one it
# does not know fails the build (JetPack 5's nvcc 11.4 stops at sm_87, CUDA 13 starts at sm_75).
#
#   arch   GPUs                     nvcc releases
#   72     Xavier (JetPack 5)       9.0 .. 12.x    (CUDA 13 dropped sm_50 .. sm_72)
#   75     Turing                   10.0 ..
#   80     A100                     11.0 ..
#   86     Ampere (RTX 30, A10)     11.1 ..
#   87     Orin (JetPack 5 and 6)   11.4 ..
#   89     Ada (RTX 40, L4)         11.8 ..
#   90     Hopper                   11.8 ..
#
# (the first releases are those of CMake's own table, Modules/CUDA/architectures.cmake; the
# drop is CUDA 13.0's.) The list holds machine code ("-real") for each architecture the release
# knows, plus PTX of the newest, which the driver compiles for GPUs after it.
#
# Both functions also run in a script (`cmake -P`), which is how tests/test_cuda_architectures.py
# checks them:
#   edgerestore_nvcc_release(<nvcc> <out>)          "11.4" from `<nvcc> --version`; "" if unreadable
#   edgerestore_cuda_architectures(<release> <out>) the default CMAKE_CUDA_ARCHITECTURES for it; ""
#                                                   when the release is unknown or too old

set(EDGERESTORE_CUDA_ARCHITECTURE_TABLE
  # arch:first release:first release without ("-": none yet)
  "72:9.0:13.0"
  "75:10.0:-"
  "80:11.0:-"
  "86:11.1:-"
  "87:11.4:-"
  "89:11.8:-"
  "90:11.8:-")

function(edgerestore_nvcc_release nvcc out)
  execute_process(COMMAND "${nvcc}" --version OUTPUT_VARIABLE text ERROR_QUIET RESULT_VARIABLE failed)
  # "Cuda compilation tools, release 11.4, V11.4.315" -- the line CMake reads the toolkit version from too
  if(NOT failed AND text MATCHES "release ([0-9]+\\.[0-9]+)")
    set(${out} "${CMAKE_MATCH_1}" PARENT_SCOPE)
  else()
    set(${out} "" PARENT_SCOPE)
  endif()
endfunction()

function(edgerestore_cuda_architectures release out)
  set(archs "")
  if(release MATCHES "^[0-9]+\\.[0-9]+")
    foreach(entry IN LISTS EDGERESTORE_CUDA_ARCHITECTURE_TABLE)
      string(REPLACE ":" ";" fields "${entry}")
      list(GET fields 0 arch)
      list(GET fields 1 first)
      list(GET fields 2 dropped)
      if(release VERSION_GREATER_EQUAL first AND (dropped STREQUAL "-" OR release VERSION_LESS dropped))
        list(APPEND archs ${arch})
      endif()
    endforeach()
  endif()
  if(archs)
    list(POP_BACK archs newest)
    list(TRANSFORM archs APPEND "-real")
    list(APPEND archs ${newest})
  endif()
  set(${out} "${archs}" PARENT_SCOPE)
endfunction()
