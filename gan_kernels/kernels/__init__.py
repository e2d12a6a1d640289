"""The Triton fast path: a constant handful of kernels over the whole gradient list (docs/performance.md).

``layout`` builds and caches the tables the kernels read, ``tiles`` finds a program's tile in them;
``stats``, ``finalize`` and ``apply`` are the kernels; ``launch`` runs a step; ``aot`` compiles every kernel ahead of time for a GPU
architecture and reports registers, spills and vector widths, with no GPU needed.
"""
