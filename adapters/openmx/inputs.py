"""OpenMX input (``.dat``, or the copy embedded in a .scfout): keywords, blocks, species and their PAO basis."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nextham_dft.errors import BasisError, ParseError

#: PAO basis name, e.g. ``Fe6.0S-s2p2d1``: element-like prefix, cutoff (Bohr), optional tag, multiplicities per l.
PAO_NAME = re.compile(r"^([A-Za-z]+?)(\d+(?:\.\d*)?)([A-Za-z]*)-((?:[spdfg]\d+)+)$")
L_OF = {"s": 0, "p": 1, "d": 2, "f": 3, "g": 4}


@dataclass(frozen=True)
class OpenMXInput:
    """Keywords (lower-case keys → raw value text) and blocks (lower-case name → rows of tokens)."""

    keywords: dict[str, str]
    blocks: dict[str, list[list[str]]]
    source: str

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.keywords.get(key.lower(), default)


def parse_input(text: str, source: str) -> OpenMXInput:
    """Parse OpenMX input text: ``key value`` lines and ``<Block ... Block>`` blocks; ``#`` comments."""
    kw: dict[str, str] = {}
    blocks: dict[str, list[list[str]]] = {}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if current is None and line.startswith("<"):
            current = line[1:].split()[0].lower()
            blocks[current] = []
            continue
        if current is not None:
            if line.lower().rstrip().endswith(current + ">") and line.split()[0].lower() == current + ">":
                current = None
            else:
                blocks[current].append(line.split())
            continue
        parts = line.split(None, 1)
        kw[parts[0].lower()] = parts[1].strip() if len(parts) > 1 else ""
    if current is not None:
        raise ParseError(source, f"block <{current} is not closed (truncated input?)")
    return OpenMXInput(kw, blocks, source)


def read_input(path: str | Path) -> OpenMXInput:
    path = Path(path)
    try:
        return parse_input(path.read_text(errors="replace"), str(path))
    except OSError as exc:
        raise ParseError(path, f"cannot read: {exc}") from None


@dataclass(frozen=True)
class Species:
    """One species of ``Definition.of.Atomic.Species``: label, element, PAO name, multiplicity per l, cutoff (Bohr)."""

    label: str
    element: str
    pao: str
    vps: str
    zetas: dict[int, int]
    rcut_bohr: float


def _element(label: str, pao_prefix: str, vps: str) -> str:
    from pymatgen.core.periodic_table import Element

    for cand in (re.match(r"[A-Z][a-z]?", vps), re.match(r"[A-Z][a-z]?", pao_prefix), re.match(r"[A-Z][a-z]?", label)):
        if cand is None:
            continue
        for sym in (cand.group(0), cand.group(0)[:1]):
            if Element.is_valid_symbol(sym):
                return sym
    raise BasisError(f"species {label}: cannot tell its element from {pao_prefix!r} or {vps!r}")


def species(inp: OpenMXInput) -> list[Species]:
    """The species of an input, with their basis decoded from the PAO names."""
    rows = inp.blocks.get("definition.of.atomic.species")
    if not rows:
        raise ParseError(inp.source, "no <Definition.of.Atomic.Species block")
    out = []
    for r in rows:
        if len(r) < 3:
            raise ParseError(inp.source, f"species line {' '.join(r)!r} needs: label PAO VPS")
        m = PAO_NAME.match(r[1])
        if m is None:
            raise BasisError(f"species {r[0]}: PAO basis {r[1]!r} is not of the form Name<rcut>-s<n>p<n>...")
        zetas = {L_OF[x[0]]: int(x[1:]) for x in re.findall(r"[spdfg]\d+", m.group(4))}
        zetas = {l: n for l, n in zetas.items() if n > 0}
        out.append(Species(r[0], _element(r[0], m.group(1), r[2]), r[1], r[2], zetas, float(m.group(2))))
    return out


def atom_labels(inp: OpenMXInput) -> list[str]:
    """Species label of each atom, in order (``Atoms.SpeciesAndCoordinates``)."""
    rows = inp.blocks.get("atoms.speciesandcoordinates")
    if not rows:
        raise ParseError(inp.source, "no <Atoms.SpeciesAndCoordinates block")
    return [r[1] for r in rows if len(r) >= 5]


def kgrid(inp: OpenMXInput) -> tuple[int, int, int] | None:
    v = inp.get("scf.Kgrid")
    if not v:
        return None
    try:
        n = tuple(int(x) for x in v.split()[:3])
    except ValueError:
        raise ParseError(inp.source, f"scf.Kgrid {v!r} is not three integers") from None
    return n if len(n) == 3 else None


def max_iter(inp: OpenMXInput) -> int | None:
    v = inp.get("scf.maxIter")
    try:
        return int(float(v.split()[0])) if v else None
    except ValueError:
        return None
