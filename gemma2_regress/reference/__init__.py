"""The reference: what Gemma-2 attention must compute, and how close a target must come.

``masks`` (which keys a query sees), ``oracle`` (the attention written out, float64 or a baseline
dtype), ``tolerance`` (the one comparison rule), ``rounding`` (the worst-case rounding bounds it and
the metamorphic properties rest on), ``verdicts`` (the form of a result, and a failed test's verdicts
from its exception). Imports nothing else of the package: everything else is checked against it.
"""
