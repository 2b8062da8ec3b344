"""The ``s2trace`` command line: a thin layer over the public API (one module per command group)."""
