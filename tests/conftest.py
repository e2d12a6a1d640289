"""Without a GPU, the Triton kernels run in Triton's interpreter on CPU tensors; it must be chosen
before any kernel is defined, so it is set here, before the tests import the package."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
