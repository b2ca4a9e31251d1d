"""The real data that tests, benchmarks and the demo use, fetched by URL and checked by sha256.

Entries live in the package's `data_registry.txt` (one line each: sha256, bytes, name, upstream
URL or `-`), generated from a mirror's files by `python -m histosynth.datasets write-registry MIRROR`.
Names are paths in the mirror's layout (`slides/CMU-1-Small-Region.svs`, `tiles/...`, `reports/...`):

* OpenSlide's CMU-1-Small-Region.svs (CC0), from the OpenSlide test-data site;
* the Kather et al. 2016 colorectal H&E tiles (CC BY 4.0), per file, from the GitHub commits their
  PROVENANCE.txt names;
* the 52 TCGA-BRCA reports and their hand labels: made for this project, so they have no upstream
  URL; the mirror's sha256 is authoritative.

Where a file comes from, in order: `HISTOSYNTH_DATA_MIRROR` (a folder laid out like ../shared/data,
used in place after its checksum is verified; or a URL base, downloaded through pooch into the
cache), else the upstream URL (pooch, into the cache). The cache is `HISTOSYNTH_DATA_CACHE`, else
the user cache folder; a cached file whose checksum matches is reused, never fetched again. A file
whose checksum does not match is refused: one line naming it, nothing kept.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .console import HistosynthError

MIRROR_ENV = "HISTOSYNTH_DATA_MIRROR"
CACHE_ENV = "HISTOSYNTH_DATA_CACHE"
REGISTRY_FILE = "data_registry.txt"
TIMEOUT_S = 10
CMU1 = "slides/CMU-1-Small-Region.svs"
UPSTREAM = {   # name prefix -> URL prefix (the commits are those the mirror's PROVENANCE.txt names)
    CMU1: "https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs",
    "tiles/kather2016_tiles_original/":
        "https://raw.githubusercontent.com/zeeshanalipnhwr/Texture-Classification-in-Colorectal-Cancer-Histology/"
        "1fecb2f48bd6212009464b269444768d1c27787a/Images/Samples/",
    "tiles/kather2016_tiles_tfds_resized224/":
        "https://raw.githubusercontent.com/Ishil-Puri/colorectal-classifier/"
        "c78079d134714a5c86186f0b6f8a330a77ddef34/src/img/test_images/",
}


_unreachable: str | None = None   # scheme://host of a server that just failed to answer


class DataUnavailable(HistosynthError):
    """The file cannot be had here (no mirror, no network): tests skip on it, CI fails."""


@dataclass(frozen=True)
class Entry:
    name: str
    sha256: str
    size: int
    url: str | None


@lru_cache(maxsize=1)
def registry() -> dict[str, Entry]:
    text = resources.files("histosynth").joinpath(REGISTRY_FILE).read_text()
    entries = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        sha, size, name, url = line.split()
        entries[name] = Entry(name, sha, int(size), None if url == "-" else url)
    return entries


def names(prefix: str = "") -> list[str]:
    return sorted(n for n in registry() if n.startswith(prefix))


def entry(name: str) -> Entry:
    try:
        return registry()[name]
    except KeyError:
        raise HistosynthError(f"{name}: not in the data registry ({len(registry())} entries; "
                              f"e.g. {CMU1})") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    import pooch

    return Path(os.environ.get(CACHE_ENV) or pooch.os_cache("histosynth"))


def _checked(path: Path, e: Entry, origin: str) -> Path:
    if path.stat().st_size != e.size or sha256(path) != e.sha256:
        raise HistosynthError(f"{origin}: checksum mismatch for {e.name} (expected sha256 {e.sha256[:12]}..., "
                              f"{e.size} bytes); refusing a corrupted or different file")
    return path


def _download(e: Entry, url: str) -> Path:
    """Through pooch into the cache (kept only if its sha256 matches; reused when it does)."""
    import pooch
    import requests

    global _unreachable
    if _unreachable is not None and url.startswith(_unreachable):
        raise DataUnavailable(f"{e.name}: {_unreachable} was unreachable a moment ago; "
                              f"set {MIRROR_ENV} to a local mirror (a folder laid out like ../shared/data)")
    cache = cache_dir()
    (cache / e.name).parent.mkdir(parents=True, exist_ok=True)
    try:
        return Path(pooch.retrieve(url, known_hash=f"sha256:{e.sha256}", fname=e.name, path=cache,
                                   downloader=pooch.HTTPDownloader(timeout=TIMEOUT_S, progressbar=False)))
    except ValueError as exc:   # pooch: hash mismatch (the download is deleted)
        raise HistosynthError(f"{url}: checksum mismatch for {e.name}; refusing a corrupted or different "
                              f"file ({str(exc).splitlines()[0]})") from None
    except (requests.RequestException, OSError) as exc:
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            _unreachable = "/".join(url.split("/")[:3])     # offline: do not wait on every file
        raise DataUnavailable(f"{e.name}: cannot download {url} ({exc.__class__.__name__}); "
                              f"set {MIRROR_ENV} to a local mirror (a folder laid out like ../shared/data)") from None


def fetch(name: str) -> Path:
    """Local path of a registry file, verified by sha256 (see the module docstring for the order)."""
    e = entry(name)
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror and "://" not in mirror:
        path = Path(mirror) / name
        if not path.is_file():
            raise DataUnavailable(f"{path}: not in the mirror {MIRROR_ENV}={mirror}")
        return _checked(path, e, str(path))
    cached = cache_dir() / name
    if cached.is_file() and cached.stat().st_size == e.size and sha256(cached) == e.sha256:
        return cached
    if mirror:
        return _download(e, mirror.rstrip("/") + "/" + name)
    if e.url is None:
        raise DataUnavailable(f"{name}: only in the project's data mirror (no public URL); set {MIRROR_ENV} "
                              "to a folder laid out like ../shared/data")
    return _download(e, e.url)


def fetch_folder(prefix: str) -> Path:
    """Every registry file under `prefix` (a folder name), fetched; returns that folder's local path."""
    files = names(prefix.rstrip("/") + "/")
    if not files:
        raise HistosynthError(f"{prefix}: no registry entries under this folder")
    paths = [fetch(n) for n in files]
    root = paths[0]
    for _ in Path(files[0]).relative_to(prefix.rstrip("/")).parts:
        root = root.parent
    return root


# ---- making the registry ---------------------------------------------------------------------------

def upstream_url(name: str) -> str | None:
    for prefix, url in UPSTREAM.items():
        if name == prefix:
            return url
        if prefix.endswith("/") and name.startswith(prefix):
            rest = name[len(prefix):]
            # the tfds set's class folders were added when it was collected: upstream, files sit flat
            return url + (rest.split("/", 1)[1] if "tfds" in prefix else rest)
    return None


def write_registry(mirror: Path, out: Path) -> int:
    """The registry of every data file of a mirror (PROVENANCE/README/LICENCE files left out)."""
    lines = [f"# generated by `python -m histosynth.datasets write-registry {mirror.name}`: sha256 bytes name url"]
    for path in sorted(p for p in mirror.rglob("*") if p.is_file()):
        name = path.relative_to(mirror).as_posix()
        if path.name.startswith((".", "PROVENANCE", "README", "LICENSE")):
            continue
        lines.append(f"{sha256(path)} {path.stat().st_size} {name} {upstream_url(name) or '-'}")
    out.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "write-registry":
        raise SystemExit("usage: python -m histosynth.datasets write-registry MIRROR_FOLDER")
    out = Path(str(resources.files("histosynth").joinpath(REGISTRY_FILE)))
    print(f"{out}: {write_registry(Path(argv[1]), out)} entries")


if __name__ == "__main__":
    main()
