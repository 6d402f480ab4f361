"""The Jupyter Book machinery (runner, parameters, record, page helpers, checks), kept apart from the library."""
