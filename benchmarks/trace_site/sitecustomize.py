"""Garbage-collection trace for the GPU throughput runs (stall hunting), in every Python process that starts with
this folder on PYTHONPATH and ``STEERMOE_GC_TRACE`` set to a folder: vLLM's engine-core process as well as the
driver. One line per collection that took at least 20 ms: ``wall_time pid generation seconds collected``."""

import os

_folder = os.environ.get("STEERMOE_GC_TRACE")
if _folder:
    import gc
    import time

    _start: list[float] = []

    def _log(phase, info):
        if phase == "start":
            _start[:] = [time.perf_counter()]
        elif _start:
            took = time.perf_counter() - _start[0]
            if took >= 0.02:
                with open(os.path.join(_folder, f"gc-{os.getpid()}.txt"), "a") as f:
                    f.write(f"{time.time():.3f} {os.getpid()} {info['generation']} {took:.3f} {info['collected']}\n")

    os.makedirs(_folder, exist_ok=True)
    gc.callbacks.append(_log)
