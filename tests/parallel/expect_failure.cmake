# A failing rank must end the whole job, by itself, with a clear message. Runs COMMAND (a list)
# under `timeout 60` and passes when the job exits non-zero before the timeout and its output
# matches every regular expression in EXPECT (a list).
#   cmake "-DCOMMAND=mpirun;-np;2;prog" "-DEXPECT=rank 1: .*injected" -P expect_failure.cmake
execute_process(COMMAND timeout 60 ${COMMAND}
                RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(output "${out}${err}")
if(status EQUAL 124)  # timeout's status; 137 is mpirun reporting a rank killed by SIGKILL
  message(FATAL_ERROR "the job hung (killed after 60 s); output:\n${output}")
endif()
if(status EQUAL 0)
  message(FATAL_ERROR "the job exited 0, expected a failure; output:\n${output}")
endif()
foreach(pattern IN LISTS EXPECT)
  if(NOT output MATCHES "${pattern}")
    message(FATAL_ERROR "output lacks '${pattern}' (exit ${status}):\n${output}")
  endif()
endforeach()
message(STATUS "failed as expected (exit ${status})")
