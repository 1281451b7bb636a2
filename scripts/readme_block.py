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


def publish(text: str, seconds: int | None, what: str, readme: str | None, name: str) -> None:
    """Print a generated table with the wall time of `what` that produced it, and put it in the
    README block `name` when `readme` is given."""
    if seconds is not None:
        minutes, seconds = divmod(seconds, 60)
        text += f"\n\nWall time of {what}: {minutes} min {seconds} s."
    print(text)
    if readme:
        replace_block(readme, name, text)
