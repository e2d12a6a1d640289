"""gan_kernels: Gradient Autoscaled Normalization (GAN) for PyTorch.

GAN removes each eligible gradient tensor's mean and multiplies all of them by one factor derived
from the global gradient std (arXiv 2509.03677). It is a gradient transform, not a Generative
Adversarial Network.
"""

from .functional import gan_
from .hooks import attach
from .optim import GAN, AdaFom, GANAdamW
from .plan import release_captured_plans
from .state import GANState, GANStats

__all__ = ["AdaFom", "GAN", "GANAdamW", "GANState", "GANStats", "attach", "gan_", "release_captured_plans"]
__version__ = "0.1.0"
