"""Replace a generated block of README.md: the text between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`, so that README tables come from scripts, never from typing."""

import sys


def replace_block(path: str, name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    with open(path) as f:
        content = f.read()
    if begin not in content or end not in content:
        sys.exit(f"error: {path} has no {begin} ... {end} block to update")
    head, rest = content.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{tail}")
