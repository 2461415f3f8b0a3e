"""The torchvision models served on real GPUs, and which run channels_last by default.

Kept free of torch so that the profiler's command line and config checks
work without it.
"""

# Model name -> channels_last by default (the convolutional networks; ViT's only convolution is its
# patch embedding). benchmarks/gpu_channels_last.py measures where that format helps.
MODELS = {
    "resnet50": True,
    "efficientnet_b0": True,
    "vit_b_16": False,
    "mobilenet_v3_large": True,
    "densenet121": True,
}
DEFAULT_CHANNELS_LAST = frozenset(m for m, cl in MODELS.items() if cl)
