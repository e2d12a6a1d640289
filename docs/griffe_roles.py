"""A griffe extension for the API reference: Sphinx roles in the docstrings become code spans.

The docstrings name other objects as ``:class:`GANState``` or ``:func:`gan_kernels.gan_```, which
Markdown would show verbatim; in the reference they read as ``GANState`` and ``gan_kernels.gan_``.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc):`~?\.?([^`]+)`")


class SphinxRolesAsCode(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
