# `mpirun -np NP frugal train ARGS MESH_ARGS` writes the checkpoint files `frugal train ARGS` writes,
# byte for byte (one micro-batch per rank). Runs both under `timeout 120` in WORK (emptied first).
#   cmake -DFRUGAL=... "-DMPIRUN=mpirun;--oversubscribe" -DNP=2 -DWORK=dir "-DARGS=cfg;--x=y"
#         -DMESH_ARGS=--train.ep=2 -P compare_cli_runs.cmake
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND timeout 120 ${FRUGAL} train ${ARGS} --train.out_dir=${WORK}/single
                RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "single-process run failed (${status}):\n${out}${err}")
endif()
execute_process(COMMAND timeout 120 ${MPIRUN} -np ${NP} ${FRUGAL} train ${ARGS} ${MESH_ARGS}
                        --train.out_dir=${WORK}/parallel
                RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT status EQUAL 0)
  message(FATAL_ERROR "${NP}-rank run failed (${status}):\n${out}${err}")
endif()
if(NOT out MATCHES "mesh: ${NP} ranks")
  message(FATAL_ERROR "the ${NP}-rank run did not report its mesh:\n${out}")
endif()
file(READ "${WORK}/single/latest" checkpoint)
string(STRIP "${checkpoint}" checkpoint)
foreach(name model.safetensors optimizer.safetensors trainer_state.json config.json)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files "${WORK}/single/${checkpoint}/${name}"
                          "${WORK}/parallel/${checkpoint}/${name}" RESULT_VARIABLE different)
  if(different)
    message(FATAL_ERROR "${checkpoint}/${name} differs between the runs")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK}")
message(STATUS "${checkpoint}: the same files")
