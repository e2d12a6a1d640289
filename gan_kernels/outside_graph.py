"""The step that ``gan_`` runs eagerly, outside the graph, when it is traced by ``torch.compile``
with a rule of one's own (``RULE_UNDER_COMPILE`` in :mod:`gan_kernels.functional`).

``torch.compiler.disable`` loads ``torch._dynamo``, so this module is imported only by the traced
call itself, never by ``import gan_kernels``; ``torch.compile`` has loaded ``torch._dynamo`` by then.
"""

from __future__ import annotations

import inspect

import torch

from .functional import RULE_UNDER_COMPILE, _eager_gan_

if "reason" in inspect.signature(torch.compiler.disable).parameters:
    eager_step = torch.compiler.disable(_eager_gan_, reason=RULE_UNDER_COMPILE)
else:  # older torch: the same, with dynamo's own message under fullgraph=True
    eager_step = torch.compiler.disable(_eager_gan_)
