"""gemma2_regress: a reproduction and regression suite for Unsloth's Gemma-2 attention path.

The flow of one test case:  strategies -> cases.make_inputs -> targets (Unsloth) and oracle ->
tolerance.compare -> verdict (ok | mismatch | nan | crash:<type>@<frame>), with versions.
"""

__version__ = "0.1.0"
