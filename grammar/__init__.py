"""The .fpol grammar, shipped as package data, and its LALR tables built ahead of time.

lark builds the tables from the grammar in about 35 ms, in every process that parses a
policy; `fpol.tables.json` holds them as lark serialises them (`python3 -m fpol.grammar`
writes it), and is used only while its key says it was made from this grammar, by this
lark, with these options (else the tables are built as before). tests/test_grammar.py
checks that the file is current.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any, Optional

import lark

# How compiler/parser.py builds the parser (besides its builder, given when loading).
OPTIONS: dict[str, Any] = {"start": ["file", "statement"], "parser": "lalr",
                           "keep_all_tokens": True, "maybe_placeholders": False}
TABLES = "fpol.tables.json"


def grammar_text() -> str:
    return resources.files(__name__).joinpath("fpol.lark").read_text(encoding="utf-8")


def tables_key() -> str:
    text = json.dumps([grammar_text(), lark.__version__, OPTIONS], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_tables() -> dict[str, Any]:
    """What `fpol.tables.json` holds: lark's serialised parser (tables, terminals, rules)."""
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    data, memo = lark.Lark(grammar_text(), **OPTIONS).memo_serialize([TerminalDef, Rule])
    return {"key": tables_key(), "lark": lark.__version__, "data": data, "memo": memo}


def tables_json() -> str:
    return json.dumps(build_tables(), sort_keys=True, indent=0) + "\n"


def _int_keys(pairs: list[tuple[str, Any]]) -> dict:
    # JSON names every key with a string; lark numbers its states and memo entries (no
    # name lark gives is all digits).
    return {int(k) if k.isdigit() else k: v for k, v in pairs}


def shipped_tables() -> Optional[dict[str, Any]]:
    """What `fpol.tables.json` holds, whatever made it; None when it is not shipped."""
    try:
        text = resources.files(__name__).joinpath(TABLES).read_text(encoding="utf-8")
    except OSError:  # not shipped (e.g. a wheel built without it)
        return None
    return json.loads(text, object_pairs_hook=_int_keys)


def prebuilt_tables() -> Optional[dict[str, Any]]:
    """The tables of `fpol.tables.json` if they are this grammar's, lark's and options'."""
    tables = shipped_tables()
    return tables if tables is not None and tables.get("key") == tables_key() else None
