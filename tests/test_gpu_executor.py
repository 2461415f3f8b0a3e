"""GpuExecutor, the profiler's measuring and NVML telemetry on a real GPU (skipped without one)."""

import pytest

torch = pytest.importorskip("torch", reason="needs a CUDA GPU (torch is not installed)")
pytest.importorskip("torchvision", reason="needs a CUDA GPU (torchvision is not installed)")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from harness.gpu.executor import MODELS, GpuExecutor, build_model  # noqa: E402
from harness.gpu.profiler import measure_partition, parse_args  # noqa: E402
from harness.gpu.partitions import parse_partition  # noqa: E402
from harness.gpu.telemetry import NvmlSampler  # noqa: E402
from harness.profiles import load_profile  # noqa: E402
from tests.gpukit import images, rel_err  # noqa: E402


@pytest.fixture(scope="module")
def resnet():
    ex = GpuExecutor(["resnet50"], batch_sizes=[1, 4, 8])
    yield ex
    ex.close()


def test_sizes_without_a_graph_run_padded_on_the_next_larger(resnet):
    for size, padded in ((1, 1), (2, 4), (3, 4), (4, 4), (5, 8), (8, 8)):
        assert resnet.run("resnet50", size, None) is None
        assert resnet.last_padded_size == padded
        assert resnet.last_output.shape == (size, 1000)


def test_graph_computes_the_model_on_the_payload(resnet):
    x = images(3, seed=1)
    resnet.run("resnet50", 3, x.tobytes())
    got = resnet.last_output.clone()
    torch.manual_seed(0)                     # the executor's weights: seed 0
    ref_model = build_model("resnet50", torch.float16, torch.device("cuda"), channels_last=True)
    with torch.inference_mode():
        ref = ref_model(torch.from_numpy(x).cuda().contiguous(memory_format=torch.channels_last))
    assert torch.isfinite(got).all()
    assert rel_err(got, ref) < 1e-2


def test_padding_does_not_change_the_real_rows(resnet):
    x = images(4, seed=2)
    resnet.run("resnet50", 4, x.tobytes())
    four = resnet.last_output.clone()
    resnet.run("resnet50", 3, x[:3].tobytes())      # the same batch-4 graph; its 4th row holds stale data
    assert torch.equal(resnet.last_output, four[:3])
    resnet.run("resnet50", 3, images(3, seed=3).tobytes())
    assert not torch.equal(resnet.last_output, four[:3])   # another input, another output


def test_payload_views_from_pinned_shared_memory_compute_what_bytes_do(resnet):
    from harness.live.arena import Arena, gather
    x = images(4, seed=4)
    resnet.run("resnet50", 4, x.tobytes())
    want = resnet.last_output.clone()
    arena = Arena.create(slot_bytes=3 * x[0].nbytes, slots=4)
    try:
        assert resnet.pin_host_memory(arena.buffer)
        a, b = arena.alloc(), arena.alloc()
        arena.write(a, x[0].tobytes())
        arena.write(b, x[1:].tobytes())          # a query of three images: one buffer, three rows
        resnet.run("resnet50", 4, gather([arena], [[0, a, 0, x[0].nbytes], [0, b, 0, 3 * x[0].nbytes]]))
        assert torch.equal(resnet.last_output, want)
        with pytest.raises(ValueError, match="does not fit rows"):
            resnet.run("resnet50", 2, gather([arena], [[0, b, 0, 3 * x[0].nbytes]]))
    finally:
        resnet.unpin_host_memory(arena.buffer)
        arena.close()


def test_wrong_payload_length_is_a_value_error(resnet):
    with pytest.raises(ValueError, match="bytes.*batch of 2 needs 602112"):
        resnet.run("resnet50", 2, b"\0" * 1000)
    with pytest.raises(ValueError, match="not loaded"):
        resnet.run("vit_b_16", 1, None)
    with pytest.raises(ValueError, match="outside"):
        resnet.run("resnet50", 9, None)


def test_without_bucketing_odd_sizes_run_eagerly_at_their_size():
    ex = GpuExecutor(["mobilenet_v3_large"], batch_sizes=[1, 4], bucket=False)
    ex.run("mobilenet_v3_large", 3, None)
    assert ex.last_padded_size == 3 and ex.last_output.shape == (3, 1000)
    ex.close()


def test_nchw_layout_computes_the_same_function():
    x = images(2, seed=5)
    ex = GpuExecutor(["resnet50"], batch_sizes=[2], channels_last=())
    assert ex.channels_last == frozenset()
    ex.run("resnet50", 2, x.tobytes())
    torch.manual_seed(0)
    ref_model = build_model("resnet50", torch.float16, torch.device("cuda"), channels_last=False)
    with torch.inference_mode():
        ref = ref_model(torch.from_numpy(x).cuda())
    assert rel_err(ex.last_output, ref) < 1e-2
    ex.close()


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_captures_and_runs(model):
    ex = GpuExecutor([model], batch_sizes=[1, 2])
    ex.run(model, 2, images(2, seed=4).tobytes())
    assert ex.last_output.shape == (2, 1000) and torch.isfinite(ex.last_output).all()
    ex.close()


def test_profiler_measures_and_writes_a_loadable_profile(tmp_path):
    args = parse_args(["--models", "mobilenet_v3_large", "--batch", "1,2", "--iters", "5", "--warmup-s", "0.01",
                       "--out", str(tmp_path / "{gpu_type}" / "{partition}.json")])
    path = measure_partition(parse_partition("whole"), args)
    profile = load_profile(path)
    assert profile.gpu_type in path.parts[-2] and profile.provenance["gpu_name"]
    assert profile.provenance["sm_count"] > 0 and profile.provenance["torch"]
    curve = profile.curves["mobilenet_v3_large"]
    assert curve.max_batch == 2 and 0 < curve.mean[1] < 100e-3


def test_nvml_sampler_reads_the_gpu():
    sampler = NvmlSampler(interval_s=0.02).start()
    GpuExecutor(["resnet50"], batch_sizes=[8]).run("resnet50", 8, None)
    frame = sampler.stop()
    assert sampler.available, sampler.reason
    assert len(frame) > 0 and (frame["sm_clock"] > 0).all() and (frame["mem_used"] > 0).all()
