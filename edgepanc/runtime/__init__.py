"""The ``edgepanc run`` pipeline: coarse-to-fine ROI, budgets, post-processing, case reports."""
