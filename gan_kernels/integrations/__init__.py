"""Adapters for the training frameworks, each imported only when its library is: the logic stays
in :func:`gan_kernels.attach`.

* :mod:`gan_kernels.integrations.transformers`: ``GANCallback`` for Hugging Face's ``Trainer``
  (extra ``hf``);
* :mod:`gan_kernels.integrations.lightning`: ``GANCallback`` for Lightning (extra ``lightning``).
"""
