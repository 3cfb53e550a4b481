"""LAMMPS potential files and ``pair_coeff`` lines: which elements a file describes,
UF3 knots, and coefficient lines that can be re-rendered for another type order."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ase.data import chemical_symbols

from ..arguments import species_list
from ..errors import ConfigurationError

_NULL = "NULL"


# ----------------------------------------------------------------------------------
# potential files
# ----------------------------------------------------------------------------------


def _data_lines(path: Path) -> list[str]:
    """Lines of a potential file without comments and blank lines, with LAMMPS
    continuation lines (a trailing ``&``) joined."""
    out = []
    pending = ""
    for line in path.read_text(errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith("&"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            out.append(line)
    if pending.strip():
        out.append(pending.strip())
    return out


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def snap_blocks(path: Path) -> tuple[int, dict[str, tuple[str, list[str]]]]:
    """``(ncoeff, {element: (header line 'El R w', [coefficient lines])})`` of a
    ``.snapcoeff`` file, in file order."""
    lines = _data_lines(path)
    nelem, ncoeff = (int(t) for t in lines[0].split()[:2])
    blocks = {}
    for k in range(nelem):
        start = 1 + k * (ncoeff + 1)
        header = lines[start]
        blocks[header.split()[0]] = (header, lines[start + 1: start + 1 + ncoeff])
    return ncoeff, blocks


def snapcoeff_elements(path: Path) -> list[str]:
    """Element names of a ``.snapcoeff`` file, in file order."""
    return list(snap_blocks(path)[1])


def setfl_elements(path: Path) -> list[str]:
    """Element names of an ``eam/alloy`` or ``eam/fs`` (setfl) file: line 4."""
    lines = path.read_text(errors="replace").splitlines()
    return lines[3].split()[1:]


def funcfl_element(path: Path) -> str:
    """Element of an ``eam`` funcfl file, from the atomic number on line 2."""
    lines = path.read_text(errors="replace").splitlines()
    return chemical_symbols[int(float(lines[1].split()[0]))]


def manybody_file_elements(path: Path) -> list[str]:
    """Elements named in an SW / Tersoff style file (every non-numeric token)."""
    seen: dict[str, None] = {}
    for line in _data_lines(path):
        for tok in line.split():
            if not _is_number(tok):
                seen.setdefault(tok, None)
    return list(seen)


def uf3_elements(path: Path) -> list[str]:
    """Elements of a LAMMPS ``.uf3`` file (from its ``2B``/``3B`` block headers)."""
    seen: dict[str, None] = {}
    for line in path.read_text(errors="replace").splitlines():
        tok = line.split()
        if tok and tok[0] in ("2B", "3B"):
            for t in tok[1 : 3 if tok[0] == "2B" else 4]:
                seen.setdefault(t, None)
    return list(seen)


def uf3_first_knots(path: Path) -> dict[tuple[str, str], float]:
    """First knot (Å) of every ``2B`` block of a LAMMPS ``.uf3`` file, under both
    element orders. Block layout: header, ``cutoff n_knots``, the knots."""
    lines = path.read_text(errors="replace").splitlines()
    out: dict[tuple[str, str], float] = {}
    for n, line in enumerate(lines):
        tok = line.split()
        if len(tok) >= 3 and tok[0] == "2B" and n + 2 < len(lines) and lines[n + 2].split():
            knot = float(lines[n + 2].split()[0])
            out[(tok[1], tok[2])] = out[(tok[2], tok[1])] = knot
    return out


def _is_uf3_file(token: str) -> bool:
    path = Path(token)
    if not path.is_file():
        return False
    with open(path, errors="replace") as fh:
        return fh.readline().startswith("#UF3 POT")


def _check_species(requested: Sequence[str] | None, described: Sequence[str], file: Path) -> tuple[str, ...]:
    """Default to the file's elements; reject species the file does not describe."""
    if requested is None:
        return tuple(described)
    requested = tuple(species_list(requested, "species"))
    bad = [s for s in requested if s not in described]
    if bad:
        raise ConfigurationError(
            f"{file.name} describes {list(described)}, not {bad}; pass species that "
            "the file contains (in LAMMPS type order)"
        )
    return requested


# ----------------------------------------------------------------------------------
# pair_coeff lines and their re-mapping to another type order
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Coeff:
    """One ``pair_coeff`` line, stored so it can be re-rendered for new type orders.

    ``types`` are the two LAMMPS type fields (``"*"`` or 1-based numbers in the order
    of the owning potential's species). When ``element_map`` is True, the line ends
    with one element name (or NULL) per type, which is regenerated on rendering.
    """

    types: tuple[str, str]
    args: tuple[str, ...]
    element_map: bool = False

    def render(self, own: Sequence[str], order: Sequence[str], substyle: str | None = None) -> list[str]:
        """The line(s) for the type order ``order`` (a superset of ``own``).

        A ``* *`` line without element map covers every type pair of ``own``; in a
        larger type order it is expanded into explicit pairs, so it does not leak onto
        species it never described.
        """
        head_sub = [substyle] if substyle else []
        if "*" in self.types and not self.element_map and tuple(own) != tuple(order):
            if self.types != ("*", "*"):
                raise ConfigurationError(
                    f"pair_coeff types {self.types} cannot be re-mapped to a new type order"
                )
            idx = sorted(order.index(s) + 1 for s in own)
            return [" ".join(["pair_coeff", str(i), str(j), *head_sub, *self.args])
                    for n, i in enumerate(idx) for j in idx[n:]]
        types = []
        for t in self.types:
            if t == "*":
                types.append("*")
            elif t.isdigit():
                types.append(str(order.index(own[int(t) - 1]) + 1))
            else:
                raise ConfigurationError(
                    f"pair_coeff type field {t!r} (a range) cannot be re-mapped to a new "
                    "type order; write one line per type pair"
                )
        if types[0] != "*" and types[1] != "*" and int(types[0]) > int(types[1]):
            types.reverse()  # LAMMPS wants I <= J
        args = list(self.args)
        if self.element_map:
            emap = dict(zip(own, self.args[len(self.args) - len(own):]))
            args = args[: len(args) - len(own)] + [emap.get(s, _NULL) for s in order]
        return [" ".join(["pair_coeff", *types, *head_sub, *args])]


def _parse_coeff(line: str, species: Sequence[str]) -> _Coeff:
    tok = line.split()
    if tok and tok[0] == "pair_coeff":
        tok = tok[1:]
    if len(tok) < 2:
        raise ConfigurationError(f"pair_coeff line {line!r} has no type fields")
    tail = tok[2:][-len(species):] if species else []
    emap = (
        tok[0] == "*" and tok[1] == "*" and len(tok) - 2 > len(species)
        and all(t in species or t == _NULL for t in tail)
    )
    return _Coeff((tok[0], tok[1]), tuple(tok[2:]), emap)


def _substyles(pair_style: str, coeffs: Sequence[_Coeff]) -> tuple[str, ...]:
    """The styles a pair style is made of: itself, or for ``hybrid``/``hybrid/overlay``
    the sub-style each ``pair_coeff`` line names (its first argument)."""
    words = pair_style.split()
    if not words[0].startswith("hybrid"):
        return (words[0],)
    named = [c.args[0] for c in coeffs if c.args and c.args[0] in words[1:]]
    return tuple(dict.fromkeys(named)) or tuple(words[1:2])


def _resolve_args(args: Sequence[str], dirs: Sequence[Path]) -> tuple[str, ...]:
    """Replace tokens that name an existing file (bare or relative) by absolute paths."""
    out = []
    for a in args:
        if "$" not in a and not _is_number(a) and a != _NULL:
            for d in (Path.cwd(), *dirs):
                if (d / a).is_file():
                    a = str((d / a).resolve())
                    break
        out.append(a)
    return tuple(out)


# ----------------------------------------------------------------------------------
# geometry: ASE cell -> LAMMPS lower-triangular box
# ----------------------------------------------------------------------------------


def uf3_covering(path: Path, species: Sequence[str]) -> str:
    """The text of the UF3 file ``path`` with a zero 2B block for every pair and a zero
    3B block for every triplet (centre, j <= k in ``species`` order) of ``species``
    that it lacks, each shaped as the file's first block of its kind.

    The added species are then present for LAMMPS but interact with nothing: what
    ``pair_coeff ... NULL`` gives other styles, which ``pair uf3`` refuses ("Interaction
    1-1-2 was mapped to 1-1-0, but potential interaction for 1-1-0 was not found").

    Raises:
        ConfigurationError: the file has no 2B block to copy the shape from.
    """
    blocks = [b.strip("\n").split("\n") for b in
              path.read_text(errors="replace").split("#UF3 POT") if b.strip()]
    # block: header tail, "2B a b ..." / "3B a b c ...", sizes, knot lines, coefficient
    # count line, coefficient lines, "#"
    kinds = {(b[1].split()[0], tuple(b[1].split()[1:3 if b[1].startswith("2B") else 4]))
             for b in blocks}
    first = {kind: next((b for b in blocks if b[1].startswith(kind)), None)
             for kind in ("2B", "3B")}
    if first["2B"] is None:
        raise ConfigurationError(f"{path.name} has no 2B block")

    def zero(template: list[str], elements: tuple[str, ...]) -> list[str]:
        knots = 1 if template[1].startswith("2B") else 3
        head = template[1].split()
        head[1 : 1 + len(elements)] = elements
        numbers = template[4 + knots:]
        return [template[0], " ".join(head), *template[2 : 4 + knots],
                *(line if line.strip() == "#" else " ".join("0.0" for _ in line.split())
                  for line in numbers)]

    added = []
    for a, b in itertools.combinations_with_replacement(species, 2):
        if ("2B", (a, b)) not in kinds and ("2B", (b, a)) not in kinds:
            added.append(zero(first["2B"], (a, b)))
    if first["3B"] is not None:
        for i in species:
            for j, k in itertools.combinations_with_replacement(species, 2):
                if ("3B", (i, j, k)) not in kinds and ("3B", (i, k, j)) not in kinds:
                    added.append(zero(first["3B"], (i, j, k)))
    return "".join("#UF3 POT" + "\n".join(b) + "\n" for b in blocks + added)
