"""One package per task: ``supervised``, ``longtail``, ``contrastive``, ``autoencoder``,
``distill``, ``compress``. Each holds its config (``config.py``), its training step and
evaluation glue, and ``main(argv, default_yaml=...)``, which ``recipes/<recipe>.py`` calls.

Dependencies point one way: recipes -> tasks -> (engine, tracking) -> building blocks (data,
models, losses, eval, compress, optim, comm, io). A task imports no other task; what two tasks
share lives in :mod:`cvdist.tasks.common` or moves down into a building block
(``tests/test_import_contract.py`` enforces this).
"""
