"""pytest plugins that every run of the suite loads (from conftest.py).

``report`` (per-example records and per-test verdicts, written as the run's summary JSON), ``summary``
(that JSON read back without pytest: the worst-ratio rows and table, shards merged), ``costs``
(the suite's own cost per tier and target), ``schedule`` (costliest GPU tests first under xdist),
``strict_xfail`` (tests of recorded upstream bugs become strict xfails on the affected releases;
the records themselves live in ``fixtures/known_issues.py``), ``require_gpu`` (``--require-gpu``),
``compile_canary`` (a torch.compile that computes wrong results stops the run before the first test),
``fresh_dynamo`` (``torch._dynamo.reset()`` at each xdist group and each test outside one: what a test
compiles does not depend on the schedule), ``compile_artifacts`` (torch's cache artifacts, for a cache to carry),
``profile_calls`` (``--profile-calls``: cProfile of chosen test calls) and ``cache_keys`` (``--cache-keys``:
the compile-cache keys of chosen test calls, with what each hashed, to diff a hit against a miss; both
built on ``chosen_calls``),
``gc_freeze`` (what a test process holds for good frozen out of the cyclic collector's full collections),
``worker_exit`` (an xdist worker ends with ``os._exit`` once its results are in: no finalization to wait for),
``markers`` (the suite's markers, declared once; also the wheel's ``pytest11`` entry point).
A session's state lives in objects made for that session (on ``config.stash``, or a plugin object
registered in ``pytest_configure``), never in module globals. May import ``reference`` and the
top-level ``gpu_check``, ``compile_check``, ``versions``, ``progress`` and ``atomic``.
"""
