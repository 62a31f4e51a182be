"""VerSe vertebra label numbers and names.

1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6 (25 = L6, a transitional lumbar vertebra), 26 sacrum,
27 coccyx, 28 T13 (an extra thoracic vertebra). VerSe annotates neither 26 nor 27.
"""

from .errors import InputError

NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 7)},
    26: "S",
    27: "Co",
    28: "T13",
}
LABELS: dict[str, int] = {name: label for label, name in NAMES.items()}

# Superior-to-inferior order; T13 sits between T12 and L1.
ORDER: list[int] = [*range(1, 20), 28, *range(20, 28)]


def level_name(label: int) -> str:
    """`20` -> `"L1"`."""
    try:
        return NAMES[int(label)]
    except (KeyError, ValueError):
        raise InputError(f"unknown VerSe label {label!r} (expected 1-28)") from None


def level_label(name: str) -> int:
    """`"L1"` -> `20`."""
    try:
        return LABELS[name.strip().upper().replace("CO", "Co")]
    except KeyError:
        raise InputError(f"unknown vertebra level {name!r} (expected e.g. T12, L1)") from None


def level_range(spec: str) -> list[int]:
    """`"T8-L5"` -> the labels from T8 to L5 in superior-to-inferior order (T13 and L6 excluded)."""
    parts = spec.split("-")
    if len(parts) != 2:
        raise InputError(f"--levels must look like T8-L5, got {spec!r}")
    first, last = (level_label(p) for p in parts)
    standard = [lab for lab in ORDER if lab not in (25, 26, 27, 28)]
    if first not in standard or last not in standard or standard.index(first) > standard.index(last):
        raise InputError(f"--levels {spec!r} is not a superior-to-inferior range of C1..L5")
    return standard[standard.index(first) : standard.index(last) + 1]


def strict_label(value) -> int:
    """A VerSe label number as written in a centroid file: an integer of the table (1-28), or a string
    or float holding one exactly. Booleans, fractions (20.5) and unknown numbers raise `ValueError`,
    so a mistyped label can never be rounded onto a neighbouring level."""
    if isinstance(value, bool):
        raise ValueError(f"label {value!r} is a boolean, not a VerSe label number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"label {value!r} is not an integer")
        value = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"label {value!r} is not an integer") from None
        if not number.is_integer():
            raise ValueError(f"label {value!r} is not an integer")
        value = int(number)
    elif not isinstance(value, int):
        raise ValueError(f"label {value!r} is not an integer")
    if value not in NAMES:
        raise ValueError(f"unknown VerSe label {value} (expected 1-28)")
    return value
