"""GpuExecutor serving models in stages, and the profiler measuring them, on a real GPU (skipped without one)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs a CUDA GPU (torch is not installed)")
pytest.importorskip("torchvision", reason="needs a CUDA GPU (torchvision is not installed)")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from harness.gpu.executor import MODELS, GpuExecutor  # noqa: E402
from harness.gpu.partitions import parse_partition  # noqa: E402
from harness.gpu.profiler import measure_partition, parse_args  # noqa: E402
from harness.profiles import load_profile  # noqa: E402
from tests.gpukit import images, rel_err  # noqa: E402

RESNET_STAGES = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


@pytest.fixture(scope="module")
def resnet():
    ex = GpuExecutor(["resnet50"], batch_sizes=[1, 2, 4, 8], stages=True)
    yield ex
    ex.close()


def whole(ex, model, x):
    ex.run(model, len(x), x.tobytes())
    return ex.last_output.clone()


def stage_by_stage(ex, model, x, first_id):
    """`x` through every stage, each stage a batch of its own (ids first_id, first_id + 1, ...)."""
    ex.run_stage(model, 0, first_id, len(x), x.tobytes(), None)
    for k in range(1, len(ex.stage_names(model))):
        ex.run_stage(model, k, first_id + k, len(x), None, [(first_id + k - 1, r) for r in range(len(x))])
    return ex.last_output.clone()


@pytest.mark.parametrize("model", sorted(MODELS))
def test_stage_by_stage_computes_the_whole_model(model):
    ex = GpuExecutor([model], batch_sizes=[1, 4], stages=True)
    x = images(3, seed=1)                    # padded to 4 at every stage
    assert len(ex.stage_names(model)) >= 4
    got = stage_by_stage(ex, model, x, 100)
    assert got.shape == (3, 1000) and torch.isfinite(got).all()
    assert rel_err(got, whole(ex, model, x)) < 1e-2
    assert ex.held_batches == 0              # every row was taken by the next stage
    ex.close()


def test_resnet_splits_into_stem_four_layers_and_head(resnet):
    assert resnet.stage_names("resnet50") == RESNET_STAGES


@pytest.mark.parametrize("newer_first", [True, False])
def test_groups_at_different_stages_merge_with_their_rows_intact(resnet, newer_first):
    # A (3 images) runs stem and layer1, then waits at layer2; B (2 images) runs stem and layer1 (its
    # layer1 writes over the buffer A's rows sit in, so A keeps a copy); then one batch of five takes
    # both groups' rows at layer2 and runs to the head. Newer first: B's rows are already in place.
    a, b = images(3, seed=2), images(2, seed=3)
    resnet.run_stage("resnet50", 0, 1, 3, a.tobytes(), None)
    resnet.run_stage("resnet50", 1, 2, 3, None, [(1, r) for r in range(3)])
    resnet.run_stage("resnet50", 0, 3, 2, b.tobytes(), None)
    resnet.run_stage("resnet50", 1, 4, 2, None, [(3, 0), (3, 1)])
    rows_a, rows_b = [(2, r) for r in range(3)], [(4, 0), (4, 1)]
    rows = rows_b + rows_a if newer_first else rows_a + rows_b
    resnet.run_stage("resnet50", 2, 5, 5, None, rows)                 # a batch of 5 runs padded to 8
    for k in (3, 4, 5):
        resnet.run_stage("resnet50", k, 3 + k, 5, None, [(2 + k, r) for r in range(5)])
    merged = resnet.last_output.clone()
    expected = whole(resnet, "resnet50", np.concatenate([b, a] if newer_first else [a, b]))
    assert rel_err(merged, expected) < 1e-2
    assert resnet.held_batches == 0


def chain(ex, model, batch, first, last, size, payload=None, rows=None):
    """Stages first..last as a worker runs a chain: every stage after the first takes the rows the one
    before left under the batch's own id."""
    ex.run_stage(model, first, batch, size, payload, rows)
    for k in range(first + 1, last + 1):
        ex.run_stage(model, k, batch, size, None, [(batch, r) for r in range(size)])


def test_a_chain_keeps_its_rows_under_its_own_id_and_merges_after_a_stop(resnet):
    # A (3 images) is a chain stopped after layer1; B (2 images) runs stem..layer1 as a chain of its own
    # (writing over the buffer A's rows sit in, so A keeps a copy); then one chain of five takes both
    # groups' rows at layer2 and runs to the head, as LazyBatching dispatches them.
    a, b = images(3, seed=5), images(2, seed=6)
    chain(resnet, "resnet50", 40, 0, 1, 3, a.tobytes())
    chain(resnet, "resnet50", 41, 0, 1, 2, b.tobytes())
    rows = [(41, 0), (41, 1)] + [(40, r) for r in range(3)]
    chain(resnet, "resnet50", 42, 2, 5, 5, rows=rows)
    assert rel_err(resnet.last_output.clone(), whole(resnet, "resnet50", np.concatenate([b, a]))) < 1e-2
    assert resnet.held_batches == 0


def test_rows_no_stage_took_are_kept_until_freed(resnet):
    resnet.run_stage("resnet50", 0, 20, 2, images(2, seed=4).tobytes(), None)
    resnet.run_stage("resnet50", 1, 21, 1, None, [(20, 1)])        # row 0 of batch 20 stays behind
    assert resnet.held_batches == 2
    resnet.free([(20, 0), (21, 0)])
    assert resnet.held_batches == 0
    with pytest.raises(ValueError, match="no activations held"):
        resnet.run_stage("resnet50", 1, 22, 1, None, [(20, 0)])


def test_misuse_is_a_value_error(resnet):
    with pytest.raises(ValueError, match="no stage 6"):
        resnet.run_stage("resnet50", 6, 30, 1, None, [(1, 0)])
    with pytest.raises(ValueError, match="takes no rows"):
        resnet.run_stage("resnet50", 0, 30, 1, None, [(1, 0)])
    plain = GpuExecutor(["mobilenet_v3_large"], batch_sizes=[1])
    with pytest.raises(ValueError, match="stages=True"):
        plain.run_stage("mobilenet_v3_large", 0, 1, 1, None, None)
    plain.close()


def test_the_profiler_measures_stages_into_a_loadable_profile(tmp_path):
    args = parse_args(["--models", "resnet50", "--batch", "1,2", "--iters", "5", "--warmup-s", "0.01", "--stages",
                       "--out", str(tmp_path / "{gpu_type}" / "{partition}.json")])
    curve = load_profile(measure_partition(parse_partition("whole"), args)).curves["resnet50"]
    assert list(curve.stage_names) == RESNET_STAGES
    assert all(stage.max_batch == 2 and stage.mean[1] > 0 for stage in curve.stages)
    # The stages add up to about the whole model (each also writes its output for the next).
    assert 0.7 * curve.mean[2] < sum(stage.mean[2] for stage in curve.stages) < 1.5 * curve.mean[2]


def test_warm_up_replays_every_graph_and_leaves_held_rows_intact(resnet):
    steps = resnet.warm_steps()
    assert len(steps) == 4 * (1 + len(RESNET_STAGES))        # each size's whole graph and its stages' graphs
    a = images(3, seed=5)
    resnet.run_stage("resnet50", 0, 40, 3, a.tobytes(), None)
    resnet.run_stage("resnet50", 1, 41, 3, None, [(40, r) for r in range(3)])
    for step in steps:                       # rows are held for layer2: the stage graphs leave them alone
        step()
    for k in range(2, len(RESNET_STAGES)):
        resnet.run_stage("resnet50", k, 40 + k, 3, None, [(39 + k, r) for r in range(3)])
    assert rel_err(resnet.last_output.clone(), whole(resnet, "resnet50", a)) < 1e-2
    assert resnet.held_batches == 0
