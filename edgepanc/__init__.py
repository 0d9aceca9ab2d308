"""edgepanc: pancreas CT from data set to a fast, small model on modest hardware.

This package is the edge runtime and everything the stages share. It never imports the training
(``train``) or compression (``quant``) stages at module level.
"""

__version__ = "0.1.0"
