"""One-line wording for error messages: a value shown short, text folded to one line.

Every kdlens error is one line that names the offending key, file or value;
these two helpers keep a huge, nested or multi-line value from breaking that.
"""

from __future__ import annotations

import reprlib
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 3, 6, 6, 6, 6
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 80, 40
SHOWN_CHARACTERS = 200


def shown(value: Any) -> str:
    """``value`` as a short one-line repr for an error message (nested, recursive and huge values are cut)."""
    text = _SHORT.repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces."""
    return " ".join(str(text).split())


def in_brief(error: BaseException) -> str:
    """An exception in a few words for a one-line message: its type and its first sentence."""
    text = str(error).strip()
    sentence = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""
    return f"{type(error).__name__}: {sentence}" if sentence else type(error).__name__
