"""Helpers of the CUDA-only tests: random images and the relative error of two outputs."""

import numpy as np


def images(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float16)


def rel_err(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-6)).item()     # random weights can give all-zero logits
