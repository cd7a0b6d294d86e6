"""Label sets: the class names a model predicts, in the order of its outputs."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from protloc.errors import ProtlocError

# The Kaggle "Zero to GANs - Human Protein Classification" classes, in the dataset's numbering.
HPA10_NAMES = (
    "Mitochondria",
    "Nuclear bodies",
    "Nucleoli",
    "Golgi apparatus",
    "Nucleoplasm",
    "Nucleoli fibrillar center",
    "Cytosol",
    "Plasma membrane",
    "Centrosome",
    "Nuclear speckles",
)

# The 2018 Kaggle "Human Protein Atlas Image Classification" classes, in the competition's numbering.
HPA28_NAMES = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Peroxisomes",
    "Endosomes",
    "Lysosomes",
    "Intermediate filaments",
    "Actin filaments",
    "Focal adhesion sites",
    "Microtubules",
    "Microtubule ends",
    "Cytokinetic bridge",
    "Mitotic spindle",
    "Microtubule organizing center",
    "Centrosome",
    "Lipid droplets",
    "Plasma membrane",
    "Cell junctions",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Cytoplasmic bodies",
    "Rods & rings",
)

# hpa28 class number -> hpa10 class number (shared/data/README.md; the 10-label set is the 2018 set reduced).
HPA28_TO_HPA10 = {23: 0, 5: 1, 2: 2, 7: 3, 0: 4, 3: 5, 25: 6, 21: 7, 19: 8, 4: 9}


@dataclass(frozen=True)
class LabelSet:
    name: str
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def _index_of_name(self) -> dict[str, int]:
        return {name.lower(): i for i, name in enumerate(self.names)}

    def parse(self, token: str) -> int:
        """A class number or a class name (case-insensitive) -> class index; ValueError names what is allowed."""
        token = token.strip()
        if token.lstrip("-").isdigit():
            index = int(token)
            if 0 <= index < len(self.names):
                return index
            raise ValueError(f"label {index} is outside 0..{len(self.names) - 1}")
        if token.lower() in self._index_of_name:
            return self._index_of_name[token.lower()]
        raise ValueError(f"label {token!r} is not a class of {self.name}{did_you_mean(token, self.names)} "
                         f"(a number 0..{len(self.names) - 1} or a class name)")

    def parse_labels(self, text: str) -> list[int]:
        """Labels of one image: numbers or names, space-separated, or separated by ';', '|' or ','.

        Class names hold spaces ("Golgi apparatus"), so space-separated names are matched greedily,
        longest name first. Raises ValueError naming every token that is not a class."""
        if any(separator in text for separator in ";|,"):
            parts = [part for part in re.split(r"[;|,]", text) if part.strip()]
            return [self.parse(part) for part in parts]
        words = text.replace("_", " ").split()
        if all(word.isdigit() and int(word) < len(self.names) for word in words):
            return [int(word) for word in words]  # the common case, kept fast for 30,000-row files
        known = self._index_of_name
        labels, errors, start = [], [], 0
        while start < len(words):
            for stop in range(len(words), start, -1):
                phrase = " ".join(words[start:stop])
                if phrase.lower() in known or (stop == start + 1 and phrase.lstrip("-").isdigit()):
                    try:
                        labels.append(self.parse(phrase))
                    except ValueError as error:
                        errors.append(str(error))
                    start = stop
                    break
            else:
                errors.append(f"label {words[start]!r} is not a class of {self.name} (a number 0..{len(self.names) - 1} or a class name)")
                start += 1
        if errors:
            raise ValueError("; ".join(errors))
        return labels


def did_you_mean(token: str, names) -> str:
    """"; did you mean 'Mitochondria'?" for a misspelt class name, or "" when no name is close."""
    by_lower = {name.lower(): name for name in names}
    token = token.strip().lower()
    # A beginning ("golgi") or a close spelling; the cutoff keeps merely similar words ("ribosome") out.
    close = [name for name in by_lower if len(token) >= 3 and name.startswith(token)][:2] or \
        difflib.get_close_matches(token, list(by_lower), n=2, cutoff=0.75)
    return f"; did you mean {' or '.join(repr(by_lower[match]) for match in close)}?" if close else ""


def list_classes(names) -> str:
    """"0 Mitochondria, 1 Nuclear bodies, ...": each class with its number, as options take them."""
    return ", ".join(f"{index} {name}" for index, name in enumerate(names))


HPA10 = LabelSet("hpa10", HPA10_NAMES)
HPA28 = LabelSet("hpa28", HPA28_NAMES)
BUILTIN_LABEL_SETS = {"hpa10": HPA10, "hpa28": HPA28}


def read_label_file(path: Path) -> LabelSet:
    """A custom label set: one class name per line, in output order; blank lines and '#' comments ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ProtlocError(f"{path}: cannot read the label file ({error.strerror or error})") from None
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise ProtlocError(f"{path}: the label file holds no class names (expected one name per line)")
    seen: set[str] = set()
    for line_number, name in enumerate(names, start=1):
        if name.lower() in seen:
            raise ProtlocError(f"{path}: class name {name!r} appears twice (each class once, one per line)")
        seen.add(name.lower())
    return LabelSet(path.stem, tuple(names))


def get_label_set(spec: str | Path) -> LabelSet:
    """'hpa10', 'hpa28', or the path of a label file."""
    if str(spec) in BUILTIN_LABEL_SETS:
        return BUILTIN_LABEL_SETS[str(spec)]
    path = Path(spec)
    if not path.exists():
        raise ProtlocError(f"unknown label set {str(spec)!r}: use hpa10, hpa28 or the path of a file with one class name per line")
    return read_label_file(path)
