"""The .fpol grammar, shipped as package data."""

from importlib import resources


def grammar_text() -> str:
    return resources.files(__name__).joinpath("fpol.lark").read_text(encoding="utf-8")
