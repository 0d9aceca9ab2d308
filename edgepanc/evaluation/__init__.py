"""``edgepanc evaluate``: per-case scores and a summary through :mod:`edgepanc.metrics`."""
