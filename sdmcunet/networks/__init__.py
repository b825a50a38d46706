"""Network builders: each takes the sizes a plans file names and returns a torch module."""
