"""The ``cvdist`` sub-commands (``shards``, ``eval``, ``compress``, ``compare``, ``demo``), one
module each, wired together by :mod:`cvdist.cli`. Commands sit at the top of the dependency
order, beside ``recipes/``: they may import tasks, the engine, tracking and every building
block, and nothing but :mod:`cvdist.cli` imports them. Each imports its heavy parts when it runs,
so ``cvdist --help`` stays fast."""
