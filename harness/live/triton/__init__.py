"""Real Triton for `system=triton` in the live runtime: tritonserver's dynamic batcher forms the batches.

    with start_triton({"resnet50": {"max_batch_size": 64}}, system_cfg, forward) as triton:
        ... POST f"{triton.url}/v2/models/resnet50/infer" ...
    # leaving the block stops it: no tritonserver process and no bound port remain

- repository: each run's model repository (config.pbtxt from conf/system/triton.yaml, and stub_model.py,
  the model every instance runs: it hands its batch to the harness over a unix socket).
- server: start_triton() runs the tritonserver binary of the nvidia-pytriton wheel on that repository;
  a thread per model instance calls `forward(model, size[, instance]) -> batch id`, which the caller
  implements by running the batch on the same worker processes every other system uses, so only the
  scheduler differs.
- stub_env: the numpy<2 environment the wheel's Python backend stub needs beside numpy 2.
- system: `system=triton` in a live run (serve_triton), recording Triton's batches in the run's ledger.
- `python -m harness.live.triton setup|check`: prepare a machine, and check that the server answers there.
"""

from harness.live.triton.repository import TIMEOUT_ACTIONS
from harness.live.triton.server import EXIT_TIMEOUT_S, TritonHandle, bind_error, processes_under, start_triton
from harness.live.triton.stub_env import STUB_ENV_VAR, setup_stub_env, stub_env_dir, stub_env_needed

__all__ = ["EXIT_TIMEOUT_S", "STUB_ENV_VAR", "TIMEOUT_ACTIONS", "TritonHandle", "bind_error", "processes_under",
           "setup_stub_env", "start_triton", "stub_env_dir", "stub_env_needed"]
