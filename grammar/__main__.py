"""`python3 -m fpol.grammar`: write the LALR tables of the grammar (fpol.tables.json)."""

import os

from fpol.grammar import TABLES, tables_json

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), TABLES)
with open(path, "w", encoding="utf-8") as f:
    f.write(tables_json())
print(f"wrote {path}")
