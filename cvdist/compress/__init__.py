"""Model compression: pruning (``pruning``), INT8 quantization (``quantization``) and the
accuracy / size / latency report (``report``). Building blocks: no engine, accelerate or
deepspeed imports; ``cli`` wires the ``cvdist compress`` command to :mod:`cvdist.compress_run`."""
