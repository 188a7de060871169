"""The fuzz targets: one module each, with ``one_input(data: bytes)`` (see ``tests/fuzz/run.py``)."""
