"""The package's version, in a module that imports nothing.

Modules that record the version (bundles, case JSONs, the CLI) import it from here rather than
from the package, whose ``__init__`` serves the Python API (:mod:`edgepanc.api`): importing the
package from below the API would make an import circle.

Example: ``from edgepanc.version import __version__`` -> ``"0.1.0"``.
"""

__version__ = "0.1.0"
