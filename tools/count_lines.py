"""Code lines per file and folder (comments, docstrings and blank lines excluded), so growth
stays visible and a file that outgrows its concern gets noticed.

Run: python -m graphir.tools.count_lines [ROOT] [--over 500]
"""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
from collections import defaultdict
from pathlib import Path

FOLDERS = ("graphir", "backends", "models", "tools", "tests")


def code_lines(source: str) -> int:
    """Lines holding code tokens, not counting docstrings or comments."""
    doc_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                if isinstance(body[0].value.value, str):
                    doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - doc_lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", default=".")
    ap.add_argument("--over", type=int, default=500, help="flag files with more code lines than this")
    args = ap.parse_args(argv)
    root = Path(args.root)
    per_folder: dict[str, int] = defaultdict(int)
    rows = []
    for top in FOLDERS:
        for path in sorted((root / top).rglob("*.py")):
            n = code_lines(path.read_text())
            rows.append((n, path.relative_to(root)))
            per_folder[str(path.parent.relative_to(root))] += n
    for n, path in sorted(rows, reverse=True):
        print(f"{n:6d}  {path}{'   <- over ' + str(args.over) if n > args.over else ''}")
    print()
    for folder, n in sorted(per_folder.items()):
        print(f"{n:6d}  {folder}/")
    print(f"{sum(n for n, _ in rows):6d}  total")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
