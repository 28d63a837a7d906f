"""ABACUS text inputs: INPUT, STRU, KPT, NAO orbital files, UPF valence charge."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nextham_dft.core.units import BOHR_TO_ANG
from nextham_dft.errors import ParseError

from .textio import read_text, strip_comment

# ---------------------------------------------------------------------------- INPUT


def read_input(path: str | Path) -> dict[str, str]:
    """INPUT (or the OUT.<suffix>/INPUT parameter dump) as {lower-case key: value string}."""
    text = read_text(path)
    out: dict[str, str] = {}
    for _k, raw in enumerate(text.splitlines(), 1):
        line = strip_comment(raw)
        if not line or line.upper().startswith("INPUT_PARAMETERS"):
            continue
        parts = line.split(None, 1)
        if len(parts) == 1:
            continue  # a key without value: ABACUS ignores it too
        out[parts[0].lower()] = parts[1].strip()
    if not out:
        raise ParseError(path, "no parameters found (not an ABACUS INPUT file?)")
    return out


# ---------------------------------------------------------------------------- STRU


@dataclass
class StruSpecies:
    label: str
    mass: float
    pseudo: str
    orbital: str = ""


@dataclass
class Stru:
    """A parsed STRU: lattice (3×3 rows, Å), Cartesian positions (Å), per-atom species label."""

    species: list[StruSpecies]
    lattice: np.ndarray
    positions: np.ndarray
    labels: list[str]
    magmom: np.ndarray  # (n_atoms, 3) μB; collinear moments go to z
    position_mode: str
    lattice_constant_bohr: float


def abacus_positions(stru: Stru) -> np.ndarray:
    """Cartesian positions (Å) as ABACUS uses them: fractional coordinates wrapped into [0, 1).

    ABACUS moves every atom into the cell when it reads STRU (its periodic boundary adjustment:
    taud += 1 while < 0, −= 1 while ≥ 1); the lattice vector R of every written H(R), S(R) and
    density matrix refers to these wrapped positions, not to STRU's. An atom at fractional −0.01
    sits at 0.99: keeping the STRU position would attach its blocks to the wrong bond vector
    (eigenvalues do not notice, since the shift is a gauge change; geometry-aware models and
    real-space densities do).
    """
    frac = stru.positions @ np.linalg.inv(stru.lattice)
    frac = frac - np.floor(frac)
    frac[frac >= 1.0] -= 1.0
    return frac @ stru.lattice


_SECTIONS = (
    "ATOMIC_SPECIES",
    "NUMERICAL_ORBITAL",
    "LATTICE_CONSTANT",
    "LATTICE_VECTORS",
    "LATTICE_PARAMETERS",
    "ATOMIC_POSITIONS",
    "NUMERICAL_DESCRIPTOR",
    "ABFS_ORBITAL",
    "PAW_FILES",
)


def lattice_from_latname(latname: str, params: list[float]) -> np.ndarray:
    """Lattice vectors (rows, in units of the lattice constant) of an ABACUS ``latname``."""
    name = latname.lower()
    need = {"hexagonal": 1, "trigonal": 1, "st": 1, "bct": 1, "so": 2, "baco": 2, "fco": 2,
            "bco": 2, "sm": 3, "bacm": 3, "triclinic": 5}.get(name, 0)
    if len(params) < need:
        raise ValueError(f"latname {latname} needs {need} LATTICE_PARAMETERS, got {len(params)}")
    p = params
    if name == "sc":
        return np.eye(3)
    if name == "fcc":
        return np.array([[-0.5, 0, 0.5], [0, 0.5, 0.5], [-0.5, 0.5, 0]])
    if name == "bcc":
        return np.array([[0.5, 0.5, 0.5], [-0.5, 0.5, 0.5], [-0.5, -0.5, 0.5]])
    if name == "hexagonal":
        return np.array([[1.0, 0, 0], [-0.5, math.sqrt(3) / 2, 0], [0, 0, p[0]]])
    if name == "trigonal":
        x = p[0]
        tx, ty, tz = math.sqrt((1 - x) / 2), math.sqrt((1 - x) / 6), math.sqrt((1 + 2 * x) / 3)
        return np.array([[tx, -ty, tz], [0, 2 * ty, tz], [-tx, -ty, tz]])
    if name == "st":
        return np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, p[0]]])
    if name == "bct":
        x = p[0]
        return np.array([[0.5, -0.5, x], [0.5, 0.5, x], [-0.5, -0.5, x]])
    if name == "so":
        return np.array([[1.0, 0, 0], [0, p[0], 0], [0, 0, p[1]]])
    if name == "baco":
        x, y = p[:2]
        return np.array([[0.5, x / 2, 0], [-0.5, x / 2, 0], [0, 0, y]])
    if name == "fco":
        x, y = p[:2]
        return np.array([[0.5, 0, y / 2], [0.5, x / 2, 0], [0, x / 2, y / 2]])
    if name == "bco":
        x, y = p[:2]
        return np.array([[0.5, x / 2, y / 2], [-0.5, x / 2, y / 2], [-0.5, -x / 2, y / 2]])
    if name == "sm":
        x, y, z = p[:3]
        return np.array([[1.0, 0, 0], [x * z, x * math.sqrt(1 - z * z), 0], [0, 0, y]])
    if name == "bacm":
        x, y, z = p[:3]
        return np.array([[0.5, 0, -y / 2], [x * z, x * math.sqrt(1 - z * z), 0], [0.5, 0, y / 2]])
    if name == "triclinic":
        x, y, m, n, l = p[:5]
        fac = math.sqrt(1 + 2 * m * n * l - m * m - n * n - l * l) / math.sqrt(1 - m * m)
        return np.array([[1.0, 0, 0], [x * m, x * math.sqrt(1 - m * m), 0],
                         [y * n, y * (l - n * m / math.sqrt(1 - m * m)), y * fac]])
    raise ValueError(f"unknown latname {latname!r}")


def _floats(tokens: list[str]) -> list[float]:
    return [float(t) for t in tokens]


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def read_stru(path: str | Path, latname: str = "none") -> Stru:
    """Parse a STRU file; lengths converted to Å. ``latname`` comes from INPUT."""
    path = Path(path)
    raw_lines = read_text(path).splitlines()
    lines = [(k + 1, strip_comment(ln)) for k, ln in enumerate(raw_lines)]
    lines = [(k, ln) for k, ln in lines if ln]
    sections: dict[str, list[tuple[int, str]]] = {}
    current = None
    for k, ln in lines:
        word = ln.split()[0].upper()
        if word in _SECTIONS:
            current = word
            sections[current] = []
            continue
        if current is None:
            raise ParseError(path, f"unexpected text before the first section: {ln[:40]!r}", k)
        sections[current].append((k, ln))
    for need in ("ATOMIC_SPECIES", "LATTICE_CONSTANT", "ATOMIC_POSITIONS"):
        if need not in sections:
            raise ParseError(path, f"missing section {need} (not an ABACUS STRU?)")
    try:
        species = []
        for k, ln in sections["ATOMIC_SPECIES"]:
            t = ln.split()
            if len(t) >= 3:
                species.append(StruSpecies(t[0], float(t[1]), t[2]))
            elif len(t) == 2 and not _is_number(t[1]):
                species.append(StruSpecies(t[0], 0.0, t[1]))
            else:
                raise ParseError(path, f"bad ATOMIC_SPECIES line {ln!r}", k)
        for sp, (_k, ln) in zip(species, sections.get("NUMERICAL_ORBITAL", [])):
            sp.orbital = ln.split()[0]
        k_lc, ln_lc = sections["LATTICE_CONSTANT"][0]
        a0_bohr = float(ln_lc.split()[0])
        if latname and latname.lower() not in ("none", "user_defined_lattice"):
            params = [float(x) for k, ln in sections.get("LATTICE_PARAMETERS", []) for x in ln.split()]
            vec = lattice_from_latname(latname, params)
        else:
            if "LATTICE_VECTORS" not in sections:
                raise ParseError(path, "missing LATTICE_VECTORS (and no latname in INPUT)")
            rows = [_floats(ln.split()[:3]) for k, ln in sections["LATTICE_VECTORS"][:3]]
            if len(rows) != 3 or any(len(r) != 3 for r in rows):
                raise ParseError(path, "LATTICE_VECTORS needs 3 lines of 3 numbers")
            vec = np.array(rows)
        lattice = vec * a0_bohr * BOHR_TO_ANG
        pos_lines = sections["ATOMIC_POSITIONS"]
        mode = pos_lines[0][1].split()[0]
        labels: list[str] = []
        coords: list[list[float]] = []
        mags: list[list[float]] = []
        idx = 1
        known = {s.label for s in species}
        while idx < len(pos_lines):
            k, ln = pos_lines[idx]
            label = ln.split()[0]
            if label not in known:
                raise ParseError(path, f"atom label {label!r} not declared in ATOMIC_SPECIES", k)
            mag_default = _floats(pos_lines[idx + 1][1].split()[:1])[0]
            count = int(pos_lines[idx + 2][1].split()[0])
            idx += 3
            for _a in range(count):
                if idx >= len(pos_lines):
                    raise ParseError(path, f"species {label}: expected {count} positions, file ends", k)
                ka, la = pos_lines[idx]
                t = la.split()
                xyz = _floats(t[:3])
                mag = [0.0, 0.0, mag_default]
                angle1 = angle2 = None
                j = 3
                while j < len(t):
                    tok = t[j].lower()
                    if tok in ("m",):
                        j += 4
                    elif tok in ("v", "vel", "velocity"):
                        j += 4
                    elif tok in ("mag", "magmom"):
                        if j + 3 < len(t) + 0 and all(_is_number(x) for x in t[j + 1 : j + 4]) and len(t[j + 1 : j + 4]) == 3:
                            mag = _floats(t[j + 1 : j + 4])
                            j += 4
                        else:
                            mag = [0.0, 0.0, float(t[j + 1])]
                            j += 2
                    elif tok == "angle1":
                        angle1 = float(t[j + 1])
                        j += 2
                    elif tok == "angle2":
                        angle2 = float(t[j + 1])
                        j += 2
                    elif _is_number(tok):
                        j += 1  # bare mobility flags
                    else:
                        j += 2  # other keyword with one value (lambda, sc, ...)
                if angle1 is not None or angle2 is not None:
                    norm = float(np.linalg.norm(mag))
                    th = math.radians(angle1 or 0.0)
                    ph = math.radians(angle2 or 0.0)
                    mag = [norm * math.sin(th) * math.cos(ph), norm * math.sin(th) * math.sin(ph), norm * math.cos(th)]
                labels.append(label)
                coords.append(xyz)
                mags.append(mag)
                idx += 1
    except ParseError:
        raise
    except (ValueError, IndexError) as exc:
        raise ParseError(path, f"malformed STRU: {exc}") from None
    if not coords:
        raise ParseError(path, "no atoms in ATOMIC_POSITIONS")
    x = np.array(coords, dtype=float)
    m = mode.lower()
    if m == "direct":
        cart = x @ lattice
    elif m == "cartesian":
        cart = x * a0_bohr * BOHR_TO_ANG
    elif m == "cartesian_au":
        cart = x * BOHR_TO_ANG
    elif m.startswith("cartesian_angstrom"):
        cart = x.copy()
        centre = {"cartesian_angstrom": (0, 0, 0), "cartesian_angstrom_center_xy": (0.5, 0.5, 0),
                  "cartesian_angstrom_center_xz": (0.5, 0, 0.5), "cartesian_angstrom_center_yz": (0, 0.5, 0.5),
                  "cartesian_angstrom_center_xyz": (0.5, 0.5, 0.5)}.get(m)
        if centre is None:
            raise ParseError(path, f"unknown position mode {mode!r}")
        cart = cart + np.array(centre) @ lattice
    else:
        raise ParseError(path, f"unknown position mode {mode!r}")
    return Stru(species, lattice, cart, labels, np.array(mags), mode, a0_bohr)


# ---------------------------------------------------------------------------- KPT


@dataclass
class Kpt:
    """A KPT file: a Monkhorst–Pack/Γ mesh, or an explicit list (direct coordinates), or a line path."""

    kind: str  # "mesh" | "list" | "line"
    mesh: tuple[int, int, int] | None = None
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gamma_centred: bool = True
    kpoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cartesian: bool = False
    labels: list[str] = field(default_factory=list)


def read_kpt(path: str | Path) -> Kpt:
    """Parse ABACUS KPT (mesh, explicit list, or Line mode; line mode expanded)."""
    text = read_text(path).splitlines()
    rows = [(ln.split("#")[0].split("//")[0].strip(), ln) for ln in text]
    rows = [r for r in rows if r[0]]
    try:
        if not rows[0][0].upper().startswith("K_POINTS"):
            raise ParseError(path, "first line must be K_POINTS")
        n = int(rows[1][0].split()[0])
        mode = rows[2][0].split()[0].lower()
        if n == 0:
            vals = rows[3][0].split()
            mesh = tuple(int(v) for v in vals[:3])
            shift = tuple(float(v) for v in vals[3:6]) if len(vals) >= 6 else (0.0, 0.0, 0.0)
            if any(m <= 0 for m in mesh):
                raise ParseError(path, f"k-mesh must be positive, got {mesh}")
            return Kpt("mesh", mesh=mesh, shift=shift, gamma_centred=mode.startswith("gamma"))
        pts = []
        labels = []
        for r, orig in rows[3 : 3 + n]:
            v = r.split()
            pts.append([float(x) for x in v[:4]] if len(v) >= 4 else [float(x) for x in v[:3]] + [1.0])
            lab = orig.split("#")[1].strip() if "#" in orig else ""
            labels.append(lab)
        if len(pts) != n:
            raise ParseError(path, f"announces {n} k-points, holds {len(pts)}")
        arr = np.array(pts)
        cart = "cartesian" in mode
        if mode.startswith("line"):
            kp, lab = [], []
            for a in range(n - 1):
                steps = max(int(arr[a, 3]), 1)
                for s in range(steps):
                    kp.append(arr[a, :3] + (arr[a + 1, :3] - arr[a, :3]) * s / steps)
                    lab.append(labels[a] if s == 0 else "")
            kp.append(arr[-1, :3])
            lab.append(labels[-1])
            return Kpt("line", kpoints=np.array(kp), weights=np.ones(len(kp)) / len(kp), cartesian=cart, labels=lab)
        w = arr[:, 3] / arr[:, 3].sum()
        return Kpt("list", kpoints=arr[:, :3], weights=w, cartesian=cart, labels=labels)
    except ParseError:
        raise
    except (ValueError, IndexError) as exc:
        raise ParseError(path, f"malformed KPT: {exc}") from None


# ---------------------------------------------------------------------------- NAO orbitals


@dataclass
class OrbFile:
    """A NAO orbital file: element, cutoff (Bohr), zetas per l, radial tables on a Bohr grid."""

    element: str
    rcut_bohr: float
    ecut_ry: float
    zetas: dict[int, int]
    dr_bohr: float
    radials: dict[tuple[int, int], np.ndarray]  # (l, zeta) -> values on r = dr * arange(mesh)


def read_orb(path: str | Path, tables: bool = True) -> OrbFile:
    """Parse an ABACUS .orb file (header always; the radial tables when ``tables``)."""
    path = Path(path)
    text = read_text(path)
    head, sep, rest = text.partition("SUMMARY  END")
    if not sep:
        head, sep, rest = text.partition("SUMMARY END")
    try:
        el = re.search(r"Element\s+(\S+)", head).group(1)
        rcut = float(re.search(r"Radius Cutoff\(a\.u\.\)\s+(\S+)", head).group(1))
        ecut_m = re.search(r"Energy Cutoff\(Ry\)\s+(\S+)", head)
        lmax = int(re.search(r"Lmax\s+(\d+)", head).group(1))
        zetas = {}
        letters = "SPDFGHI"
        for l in range(lmax + 1):
            m = re.search(rf"Number of {letters[l]}orbital-->\s+(\d+)", head)
            zetas[l] = int(m.group(1)) if m else 0
    except (AttributeError, ValueError):
        raise ParseError(path, "not an ABACUS orbital file (header lacks Element/Radius Cutoff/Lmax)") from None
    zetas = {l: n for l, n in zetas.items() if n > 0}
    radials: dict[tuple[int, int], np.ndarray] = {}
    dr = 0.01
    if tables and sep:
        try:
            mesh = int(re.search(r"Mesh\s+(\d+)", rest).group(1))
            dr = float(re.search(r"dr\s+(\S+)", rest).group(1))
            blocks = re.split(r"\s*Type\s+L\s+N\s*\n", rest)[1:]
            for b in blocks:
                toks = b.split()
                l, n = int(toks[1]), int(toks[2])
                vals = np.array(toks[3 : 3 + mesh], dtype=float)
                if len(vals) != mesh:
                    raise ParseError(path, f"radial table l={l} zeta={n} has {len(vals)} of {mesh} points (truncated?)")
                radials[(l, n)] = vals
        except ParseError:
            raise
        except (AttributeError, ValueError, IndexError):
            raise ParseError(path, "malformed radial tables") from None
        for l, n in zetas.items():
            for z in range(n):
                if (l, z) not in radials:
                    raise ParseError(path, f"radial table l={l} zeta={z} missing (truncated?)")
    return OrbFile(el, rcut, float(ecut_m.group(1)) if ecut_m else 0.0, zetas, dr, radials)


def read_upf_valence(path: str | Path) -> float:
    """Valence charge z_valence of a UPF pseudopotential (v1 or v2)."""
    return _upf_valence(read_text(path), path)


def _upf_valence(text: str, path: str | Path) -> float:
    """z_valence from a UPF file's text (v2 attribute or v1 header line)."""
    m = re.search(r'z_valence\s*=\s*"\s*([-+0-9.eEdD]+)\s*"', text)
    if not m:
        m = re.search(r"^\s*([-+0-9.eEdD]+)\s+Z valence", text, re.M)
    if not m:
        raise ParseError(path, "no z_valence in pseudopotential")
    return float(m.group(1).replace("d", "e").replace("D", "e"))


def _upf_array(text: str, tag: str) -> np.ndarray | None:
    """The numbers inside <tag ...> ... </tag> (the tag name exactly, not a longer one), or None."""
    m = re.search(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", text, re.S)
    if m is None:
        return None
    try:
        return np.array(m.group(1).replace("D", "E").replace("d", "e").split(), dtype=float)
    except ValueError:
        return np.zeros(0)  # flags a malformed table to the caller


def _upf_functional(text: str) -> str:
    """The functional named by a UPF header (v2 attribute or v1 header line), canonical upper case."""
    m = re.search(r'functional\s*=\s*"([^"]*)"', text)
    if m is None:
        m = re.search(r"^\s*(.*?)\s+Exchange-Correlation functional", text, re.M)
    words = m.group(1).upper().split() if m else []
    if "PBE" in words or {"PBX", "PBC"} <= set(words):
        return "PBE"
    return " ".join(words)


def read_upf_density(path: str | Path):
    """The atomic valence density (PP_RHOATOM, 4πr²ρ on PP_R) and partial core density (PP_NLCC) of a UPF
    pseudopotential (v1 or v2), as an :class:`~nextham_dft.core.atomic.AtomicDensity` in Å and e/Å³."""
    from nextham_dft.core.atomic import AtomicDensity
    from nextham_dft.core.basis import file_sha256

    path = Path(path)
    text = read_text(path)
    r = _upf_array(text, "PP_R")
    rhoat = _upf_array(text, "PP_RHOATOM")
    if r is None or rhoat is None or len(r) < 2 or len(rhoat) != len(r):
        raise ParseError(path, "no radial mesh (PP_R) and atomic density (PP_RHOATOM) of one length (truncated?)")
    core = _upf_array(text, "PP_NLCC")
    if core is None:
        core = np.zeros_like(r)
    if len(core) != len(r):
        raise ParseError(path, "PP_NLCC and PP_R differ in length (truncated?)")
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.where(r > 1e-12, rhoat / (4.0 * np.pi * r * r), 0.0)
    if r[0] <= 1e-12:  # ρ at r = 0 from the next point (4πr²ρ vanishes there)
        val[0] = val[1]
    scale = BOHR_TO_ANG**3
    el = re.search(r'element\s*=\s*"\s*([A-Za-z]+)\s*"', text) or re.search(r"^\s*([A-Z][a-z]?)\s+Element", text, re.M)
    return AtomicDensity(element=el.group(1) if el else path.stem, r=r * BOHR_TO_ANG, valence=val / scale,
                         core=core / scale, functional=_upf_functional(text), z_valence=_upf_valence(text, path),
                         source=path.name, sha256=file_sha256(path.read_bytes()))
