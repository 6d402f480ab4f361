"""The paper's method: config (the paper preset), DDIM inversion, attention recording, aggregation and the :class:`~groundiff_core.engine.grounder.Grounder`."""
