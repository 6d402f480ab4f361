"""The embedded test bed: a synthetic chest phantom benchmark and the small LDM trained on it."""
