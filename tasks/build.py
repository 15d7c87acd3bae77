"""Builds the shipped in-context tasks from the held-out text of the project's corpora.

    python tasks/build.py [--data ../shared/data] [--out tasks]

    shakespeare_lastword  cloze   the last word of a speech (LAMBADA-style), tiny_shakespeare
    shakespeare_nextline  choice  the next line of a speech among 4 lines, tiny_shakespeare
    austen_nextsent       choice  the next sentence among 4 sentences, Jane Austen

Only held-out text is used: tiny_shakespeare's test split (the last 5% of characters) gives the
eval examples and its validation split (the 5% before) the few-shot examples; for Austen, the
last 5% of austen.txt (what `data.holdout_fraction=0.05` holds out) gives few-shot examples from
its first quarter and eval examples from the rest. Distractors are lines / sentences of similar
length from the same split, so a model cannot win by preferring short choices. Every text is
limited to tiny_shakespeare's 65 characters (Austen's double quotes become single quotes,
underscores are dropped, anything else outside the set drops the example), so the quickstart's
character model can read all tasks.
Deterministic: the same corpora always give the same files (tests/test_tasks.py checks).
"""

import argparse
import json
import os
import random
import re

EVAL, FEWSHOT = 400, 100
SEED = 1234
ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Col.", "Capt.")


def similar(pool, text, rng, k=3):
    """k strings from `pool`, other than `text`, of about its length."""
    near = [p for p in pool if p != text and abs(len(p) - len(text)) <= max(4, len(text) // 4)]
    return rng.sample(near, k) if len(near) >= k else None


def speeches(text):
    """Speech blocks ('NAME:' line, then lines) of a slice; the first, maybe cut, is dropped."""
    blocks = [b.strip("\n").split("\n") for b in text.split("\n\n")][1:-1]
    return [b for b in blocks if len(b) >= 2 and b[0].endswith(":")]


def lastword(text, n, rng):
    out = []
    for speaker, *lines in speeches(text):
        m = re.search(r" ([A-Za-z]{3,})[^A-Za-z]*$", lines[-1])
        if m:
            context = "\n".join([speaker] + lines[-4:-1] + [lines[-1][:m.start()]])
            out.append({"context": context, "target": " " + m.group(1)})
    return rng.sample(out, min(n, len(out)))


def choice_rows(pairs, pool, n, rng, joiner):
    """(context, next) pairs -> choice examples with 3 similar-length distractors."""
    rows = []
    for context, true in rng.sample(pairs, len(pairs)):
        others = similar(pool, true, rng)
        if others is None:
            continue
        choices = [true] + others
        rng.shuffle(choices)
        rows.append({"context": context, "choices": [joiner + c for c in choices],
                     "answer": choices.index(true)})
        if len(rows) == n:
            break
    return rows


def nextline(text, n, rng):
    pairs, pool = [], []
    for speaker, *lines in speeches(text):
        pool += lines
        for i in range(len(lines) - 1):
            pairs.append(("\n".join([speaker] + lines[max(0, i - 2):i + 1]), lines[i + 1]))
    return choice_rows(pairs, pool, n, rng, "\n")


def sentences(text, charset):
    """Paragraphs of Austen -> lists of sentences in `charset` (None: outside it)."""
    text = text.replace('"', "'").replace("_", "")
    out = []
    for para in text.split("\n\n")[1:-1]:
        para = re.sub(r"\s+", " ", para).strip()
        for abbr in ABBREVIATIONS:
            para = para.replace(abbr + " ", abbr + "\0")
        sents = [s.replace("\0", " ") for s in re.split(r"(?<=[.!?]) (?=[A-Z'])", para)]
        out.append([s if set(s) <= charset else None for s in sents])
    return out


def nextsent(text, charset, n, rng):
    pairs, pool = [], []
    for sents in sentences(text, charset):
        ok = [s for s in sents if s and 15 <= len(s) <= 200]
        pool += ok
        pairs += [(a, b) for a, b in zip(sents, sents[1:], strict=False)
                  if a in ok and b in ok]
    return choice_rows(pairs, pool, n, rng, " ")


def write(out, name, fmt, source, splits):
    directory = os.path.join(out, name)
    os.makedirs(directory, exist_ok=True)
    spec = {"name": name, "format": fmt, "eval": "eval.jsonl", "fewshot": "fewshot.jsonl",
            "separator": "\n\n", "seed": SEED, "source": source}
    with open(os.path.join(directory, "task.json"), "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    for split, rows in splits.items():
        with open(os.path.join(directory, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"{directory}: {len(splits['eval'])} eval, {len(splits['fewshot'])} few-shot examples")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data"))
    parser.add_argument("--out", default=here)
    args = parser.parse_args(argv)
    with open(os.path.join(args.data, "tiny_shakespeare", "input.txt")) as f:
        shakespeare = f.read()
    with open(os.path.join(args.data, "austen", "austen.txt")) as f:
        austen = f.read()
    n = len(shakespeare)
    valid, test = shakespeare[int(0.9 * n):int(0.95 * n)], shakespeare[int(0.95 * n):]
    src = "tiny_shakespeare: eval from the test split (last 5%), few-shot from validation"
    for name, fmt, fn in (("shakespeare_lastword", "cloze", lastword),
                          ("shakespeare_nextline", "choice", nextline)):
        rng = random.Random(f"{SEED}:{name}")
        write(args.out, name, fmt, src, {"eval": fn(test, EVAL, rng),
                                         "fewshot": fn(valid, FEWSHOT, rng)})
    held = austen[int(0.95 * len(austen)):]
    charset, rng = set(shakespeare), random.Random(f"{SEED}:austen_nextsent")
    write(args.out, "austen_nextsent", "choice",
          "austen.txt: the last 5% (held out); few-shot from its first quarter, eval the rest",
          {"eval": nextsent(held[len(held) // 4:], charset, EVAL, rng),
           "fewshot": nextsent(held[:len(held) // 4], charset, FEWSHOT, rng)})


if __name__ == "__main__":
    main()
