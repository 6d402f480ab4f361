"""Independent yardsticks for tests and benchmarks, importable by anyone who wants to check the engine.

``reference`` implements METHOD.md's preprocessing, back-projection and metrics from its prose;
``naive`` is the paper's Algorithm 1 written the slow, obvious way. Neither imports anything else
from ``groundiff_core``, so an agreement between them and the engine is evidence, not a tautology.
"""
