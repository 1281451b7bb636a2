"""The listing of `--dataset_name folder` (utils.data.ImageFiles): every image file under a
folder, recursively (torchvision's image extensions, any case; hidden files and folders skipped).

Walking a folder of a million files takes minutes, so the list is cached: in
`<folder>/.ssl_toolkit/images.json` when the folder is writable, else under the user's cache
(`$XDG_CACHE_HOME` or `~/.cache`, `ssl_toolkit/images/`). The cache records the modification time
of every sub-folder; a start stats those folders (no listing) and walks again only when one of them
changed, which is what adding, removing or renaming a file or folder does.
"""

import hashlib
import json
import os
import sys

from torchvision.datasets.folder import IMG_EXTENSIONS

from utils.distributed import is_main_process

CACHE_VERSION = 1
CACHE_FOLDER = ".ssl_toolkit"  # inside the data folder: hidden, so never listed or tracked


def cache_path(root: str) -> str:
    """Where the listing of `root` is cached: inside it when writable, else in the user cache."""
    root = os.path.abspath(root)
    if os.access(root, os.W_OK):
        return os.path.join(root, CACHE_FOLDER, "images.json")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha1(root.encode()).hexdigest()[:16]
    return os.path.join(base, "ssl_toolkit", "images", f"{digest}.json")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def walk_images(root: str) -> tuple[list[str], dict[str, int], list[str]]:
    """The image paths under `root` (relative, sorted), the modification time (ns) of every
    folder walked (relative; "." is root), hidden ones skipped, and the folders that could not
    be read (permissions), whose images are left out. Symbolic links to folders are followed,
    each folder once: a link back up the tree (a loop) or to a folder already walked would list
    the same images again."""
    files, folders, unreadable, seen = [], {}, [], set()

    def refused(err: OSError) -> None:
        unreadable.append(os.path.relpath(err.filename, root))

    for folder, subfolders, names in os.walk(root, followlinks=True, onerror=refused):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            subfolders[:] = []  # walked already, under another path
            continue
        seen.add((stat.st_dev, stat.st_ino))
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        rel = os.path.relpath(folder, root)
        folders[rel] = stat.st_mtime_ns
        files.extend(os.path.normpath(os.path.join(rel, n)) for n in sorted(names) if is_image(n))
    return sorted(files), folders, sorted(unreadable)


def read_cache(path: str, root: str) -> list[str] | None:
    """The cached listing of `root`, if it is there and no folder of it changed since."""
    try:
        with open(path) as f:
            cached = json.load(f)
        if cached.get("version") != CACHE_VERSION or cached.get("root") != root:
            return None
        for rel, mtime in cached["folders"].items():
            if os.stat(os.path.join(root, rel)).st_mtime_ns != mtime:
                return None
        return cached["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cache(path: str, root: str, files: list[str], folders: dict[str, int]) -> None:
    """Write the listing atomically (a temporary file renamed over the old one)."""
    record = {"version": CACHE_VERSION, "root": root, "folders": folders, "files": files}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def list_images(root: str, cache: str | None) -> tuple[list[str], str]:
    """The image paths under `root` (relative, sorted) and where they came from, for the log:
    the cache when it is still valid, else a walk of the folder (then cached: by the main process
    only, under DDP; a cache that cannot be written is a note, not an error)."""
    if cache is not None:
        files = read_cache(cache, root)
        if files is not None:
            return files, f"listed from the cache {cache} (no folder changed)"
        if is_main_process():
            try:  # before the walk: making the cache folder changes root's modification time
                os.makedirs(os.path.dirname(cache), exist_ok=True)
            except OSError:
                cache = None
    files, folders, unreadable = walk_images(root)
    if unreadable:  # not cached: a later start, after a chmod, walks again and finds them
        shown = ", ".join(unreadable[:3]) + (" ..." if len(unreadable) > 3 else "")
        print(
            f"warning: {len(unreadable)} folder(s) under {root} could not be read, their images "
            f"left out: {shown}",
            file=sys.stderr,
        )
        return files, f"listed ({len(folders)} folders walked; not cached: unreadable folders)"
    if cache is None or not is_main_process():
        return files, f"listed ({len(folders)} folders walked)"
    try:
        write_cache(cache, root, files, folders)
    except OSError as err:
        return files, f"listed ({len(folders)} folders walked; not cached: {err.strerror})"
    return files, f"listed ({len(folders)} folders walked) and cached in {cache}"
