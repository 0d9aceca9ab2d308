"""``python -m edgepanc`` is the ``edgepanc`` command."""

from edgepanc.cli import main

main()
