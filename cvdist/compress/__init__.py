"""Model compression: pruning (``pruning``), INT8 quantization (``quantization``) and the
accuracy / size / latency report (``report``). A building block: no engine, task, tracking,
accelerate or deepspeed imports; the compression run is :mod:`cvdist.tasks.compress` and the
``cvdist compress`` command :mod:`cvdist.commands.compress`."""
