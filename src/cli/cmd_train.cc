// frugal train CONFIG.toml [--resume] [--section.key=value ...]
// Checks every input (config, out_dir, data file and its size) before printing or writing
// anything, so a bad input gives one error line; then prints the settings table and trains.
// Exit codes: 0 done, 1 an error, 130 stopped by Ctrl-C/SIGTERM after saving a checkpoint.
//
// Under an MPI launcher with several ranks (mpirun -np N, srun) every rank runs this: MPI starts,
// the mesh comes from the world size and train.pp / train.ep (parallel/mesh.h), and the trainer
// runs data (ZeRO-1) and expert parallelism on the CPU engine, or with train.pp > 1 the pipeline
// engine over pp x dp (x ep); train.device = "cuda" runs data parallelism (one GPU per rank,
// ZeRO-1 through NCCL by default) and expert parallelism (train/gpu_engine.h), or with
// train.pp > 1 the GPU pipeline engine over pp x dp (x ep) (train/gpu_pipeline_engine.h). World
// rank 0 prints, logs and writes checkpoints. An error on any rank prints
// "frugal: rank R: <message>" and ends every rank (MPI_Abort).
#include <omp.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "cli/args.h"
#include "cli/commands.h"
#include "data/training_data.h"
#include "io/config_io.h"
#include "parallel/mesh.h"
#include "train/trainer.h"
#ifdef FRUGAL_HAVE_MPI
#include "parallel/mpi_communicator.h"
#endif

extern "C" void openblas_set_num_threads(int);

namespace frugal {
namespace {

constexpr const char* kHelp =
    "usage: frugal train CONFIG.toml [--config FILE] [--resume] [--section.key=value ...]\n"
    "\n"
    "Pre-trains the model the config describes on data.train_path: a text file (.txt or\n"
    ".txt.zst; byte-level tokens) or a token dataset made by `frugal data tokenize`\n"
    "(data.mix = \"dirA=0.7,dirB=0.3\" mixes several), logging a step line, metrics.jsonl and checkpoints in\n"
    "train.out_dir. A run directory that already holds a checkpoint is never overwritten:\n"
    "pass --resume to continue it exactly where it stopped, or choose another train.out_dir.\n"
    "\n"
    "  --config FILE   the TOML config (same as the positional argument)\n"
    "  --resume        continue from the newest checkpoint in train.out_dir\n"
    "  --section.key=value   override any setting, e.g. --train.steps=50 --optim.lr=1e-3\n"
    "\n"
    "Ctrl-C (or SIGTERM) stops after the current step and saves a checkpoint that --resume\n"
    "continues exactly (exit code 130); a second Ctrl-C stops at once.\n"
    "\n"
    "Several processes: mpirun -np N frugal train CONFIG [--train.ep=E] (or srun) trains on the\n"
    "CPU with data parallelism over the N ranks (ZeRO-1: optimizer state sharded) and, with E > 1,\n"
    "expert parallelism inside it (each group of E ranks shares out the routed experts).\n"
    "The micro-batches of a step are dealt out to the ranks; the result is the single-process\n"
    "one, and the checkpoints are the files a single process writes (any N resumes them).\n"
    "Pipeline: mpirun -np N frugal train CONFIG --train.pp=P [--train.pp_schedule=1f1b|zb1p|\n"
    "dualpipe|dualpipev] [--train.ep=E] [--train.pp_stage_layers=auto|even|3,4,3,2] splits the\n"
    "layers over the stages (auto: balanced by FLOPs, the head and MTP counted); the N/P ranks of a stage\n"
    "are its data-parallel group (ZeRO-1, E > 1: expert parallelism inside it), each running the\n"
    "schedule over its share of the step's micro-batches (a multiple of N/P; no batch ramp).\n"
    "With --train.device=cuda each rank drives one GPU (NCCL): the same meshes, ZeRO-1 for data\n"
    "parallelism without a pipeline (--train.gpu_zero1=false all-reduces instead).\n";

// Set by the first SIGINT/SIGTERM: the run stops after the current step and saves a checkpoint.
// The handler then restores the default action, so a second Ctrl-C ends the process at once.
std::atomic<bool> g_stop_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free);

void request_stop(int signal_number) {
  g_stop_requested.store(true);
  std::signal(signal_number, SIG_DFL);
}

// Ranks the launcher started on this node (1 when unknown).
int ranks_on_this_node() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"})
    if (const char* value = std::getenv(name); value && std::atoi(value) > 0) return std::atoi(value);
  return 1;
}

int train(const std::vector<std::string>& argv, Communicator* world);

}  // namespace

int cmd_train(const std::vector<std::string>& argv) {
  std::unique_ptr<Communicator> world;
#ifdef FRUGAL_HAVE_MPI
  if (launched_with_several_ranks()) {
    mpi_init(nullptr, nullptr);
    world = mpi_world_communicator();
  }
#endif
  if (!world) return train(argv, nullptr);
  try {
    return train(argv, world.get());
  } catch (const std::bad_alloc&) {
    world->abort("out of memory");
  } catch (const std::exception& e) {
    world->abort(e.what());
  }
  return 1;  // not reached: abort() ends every rank
}

namespace {

int train(const std::vector<std::string>& argv, Communicator* world) {
  const bool printer = world == nullptr || world->rank() == 0;
  ParsedArgs args = parse_args(argv, {"config"}, {"resume", "help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  std::string config_path = args.option("config");
  FRUGAL_CHECK(args.positional.size() <= 1 && (config_path.empty() || args.positional.empty()),
               "train takes one config file (see --help)");
  if (config_path.empty() && !args.positional.empty()) config_path = args.positional[0];
  FRUGAL_CHECK(!config_path.empty(), "train needs a config file, e.g. frugal train configs/tiny.toml");

  Config config = load_config(config_path, args.overrides);
  FRUGAL_CHECK(!config.data.train_path.empty() || !config.data.mix.empty(),
               "{}: data.train_path is not set (pass --data.train_path=FILE)", config_path);
  const bool resume = args.has("resume");
  if (!resume && has_checkpoint(config.train.out_dir))
    fail("{} already holds a checkpoint; pass --resume to continue it or set another "
         "--train.out_dir (nothing was overwritten)",
         config.train.out_dir);
  if (resume)
    FRUGAL_CHECK(has_checkpoint(config.train.out_dir),
                 "{}: no checkpoint to resume in train.out_dir (run without --resume to start)",
                 config.train.out_dir);
  const std::string checkpoint = resume ? resolve_checkpoint(config.train.out_dir) : "";

  std::unique_ptr<Mesh> mesh;
  if (world) {
    mesh = std::make_unique<Mesh>(*world, mesh_shape(world->size(), config.train, config.model));
    // Cores are shared by the ranks of a node unless train.threads says otherwise.
    const int per_rank = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                         ranks_on_this_node());
    if (config.train.threads == 0) {
      omp_set_num_threads(per_rank);
      openblas_set_num_threads(per_rank);
    }
  } else {
    FRUGAL_CHECK(config.train.pp == 1 && config.train.ep == 1,
                 "train.pp = {} and train.ep = {} need several processes: launch with mpirun -np N "
                 "(or srun) to use them",
                 config.train.pp, config.train.ep);
  }

  // Every input is checked before anything is printed or written. Each rank reads the whole
  // batch stream and keeps its micro-batches (train/trainer.h).
  TrainingData data = open_training_data(config);
  Trainer trainer(config, *data.train, data.validation.get(), /*quiet=*/false, mesh.get());
  if (resume) trainer.resume(checkpoint);  // a damaged or mismatched checkpoint fails here

  if (printer) {
    std::printf("%s\n", settings_table(config).c_str());
    std::printf("data: %s\n", data.description.c_str());
    if (mesh) std::printf("mesh: %d ranks, %s\n", world->size(), describe(mesh->shape()).c_str());
    std::printf("model: %.3fM parameters%s\n",
                static_cast<double>(trainer.model().params().numel()) / 1e6,
                mesh && mesh->shape().ep > 1 ? " on this rank" : "");
  }
  if (resume && printer) {
    std::printf("resumed from %s at step %lld\n", checkpoint.c_str(),
                static_cast<long long>(trainer.state().step));
    if (trainer.state().step >= config.train.steps)
      std::printf("nothing to do: the checkpoint is at step %lld and train.steps is %lld "
                  "(raise --train.steps to continue)\n",
                  static_cast<long long>(trainer.state().step),
                  static_cast<long long>(config.train.steps));
  }
  if (resume && trainer.state().step >= config.train.steps) return 0;
  trainer.set_stop_flag(&g_stop_requested);
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  TrainSummary summary = trainer.run();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (!printer) return summary.interrupted ? 130 : 0;
  if (summary.steps_done == 0) {
    std::printf("done: no steps to run (train.steps = %lld)\n",
                static_cast<long long>(config.train.steps));
    return 0;
  }
  if (summary.interrupted)
    std::printf("interrupted after step %lld of %lld; continue with --resume\n",
                static_cast<long long>(trainer.state().step),
                static_cast<long long>(config.train.steps));
  std::printf("done: %lld steps, loss %.4f -> %.4f", static_cast<long long>(summary.steps_done),
              summary.first_loss, summary.last_loss);
  if (summary.skipped_steps > 0)
    std::printf(", %lld skipped (non-finite gradient)", static_cast<long long>(summary.skipped_steps));
  if (summary.last_val_loss >= 0) std::printf(", validation loss %.4f", summary.last_val_loss);
  std::printf("\n");
  return summary.interrupted ? 130 : 0;  // 128 + SIGINT, as shells report an interrupted command
}

}  // namespace
}  // namespace frugal
