"""Synthetic abdominal CT phantoms behind ``edgepanc synth``.

``generate_phantom(PhantomSpec(...))`` makes one case in memory; ``synthesize(SynthConfig(...))``
writes a whole data set in the quiz or nnU-Net raw layout; ``nontriviality`` measures how far
simple intensity rules are from solving it.
"""

from edgepanc.synth.dataset import SynthConfig, plan_cases, synthesize
from edgepanc.synth.phantom import Phantom, PhantomSpec, generate_phantom

__all__ = ["Phantom", "PhantomSpec", "SynthConfig", "generate_phantom", "plan_cases", "synthesize"]
