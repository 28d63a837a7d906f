"""DFT-code adapters: the only place that knows a code's files.

Installed as ``nextham_dft.adapters`` (see setup.cfg); each adapter registers
itself through the entry-point group ``nextham_dft.adapters``.
"""
