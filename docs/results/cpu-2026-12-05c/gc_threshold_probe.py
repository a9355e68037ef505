"""A throwaway pytest plugin: the cyclic collector's oldest generation collected a tenth as often (docs/perf.md).

    PYTHONPATH=$PWD/docs/results/cpu-2026-12-05c:$PWD/docs/results/cpu-2026-12-04 \\
        python3 -m nox -R -s cpu -- -p gctime_probe -p gc_threshold_probe
"""

import gc

gc.set_threshold(700, 10, 100)  # Python's default is (700, 10, 10)
