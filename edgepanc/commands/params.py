"""Click parameter types shared by the subcommands."""

from __future__ import annotations

import math

import click


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and infinities, optionally within ``[min, max]``.

    ``float("nan")`` compares false with every bound, so click's own ``FloatRange`` lets it
    through (``--max-temp nan`` silently turned throttling off). Example::

        @click.option("--max-temp", type=FiniteFloat(20, 120))
    """

    name = "finite float"

    def convert(self, value, param, ctx):  # noqa: D102
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        return "finite" if self.min is None and self.max is None else super()._describe_range()

    def __repr__(self) -> str:
        return f"FiniteFloat({self.min}, {self.max})"
