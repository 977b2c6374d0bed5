"""`pangu generate`, `pangu export` and `pangu serve` (one module each, the cli.py COMMANDS contract)."""
