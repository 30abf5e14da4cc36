"""``hydra/sweeper: preflighted``: Hydra's basic sweeper, without its second composition of each cell.

``bench`` composes and validates every cell of a sweep before Hydra starts (bench/preflight.py). The basic sweeper
would then compose each cell once more before launching it (``validate_batch_is_legal``), and the launcher composes it
a third time to run it. This sweeper skips the second composition for the cells the preflight checked in this process
and validates any other cell as the basic sweeper does. Hydra loads sweepers from the ``hydra_plugins`` package only.
"""
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class PreflightedSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch) -> None:
        from bench.preflight import unchecked  # lazy: Hydra imports every plugin module at start-up

        rest = unchecked(batch)
        if rest:
            super().validate_batch_is_legal(rest)
