"""nextham-dft: converged Kohn–Sham Hamiltonians from the zeroth step, for NAO DFT codes."""

from __future__ import annotations

__version__ = "0.1.0"
