"""Builds the shipped in-context tasks from the held-out text of the project's corpora.

    python tasks/build.py [--data ../shared/data] [--out tasks]

Short tasks, for character models with windows of 64-128 characters: an example (context +
answer) has at most 21 characters and k-shot examples are joined by a newline, so a 5-shot
prompt (6 examples) fits a 128-character window.

    shakespeare_wordend    cloze   the rest of a word cut in half ('my gracious lo' -> 'rd')
    shakespeare_wordorder  choice  3 words in their order, or in 3 other orders
    shakespeare_spelling   choice  2-3 words as written, or with 2 adjacent letters swapped
    austen_wordend         cloze   shakespeare_wordend's rule on Jane Austen's sentences

Contexts are whole words of the same line (sentence, for Austen) before the answer:
  wordend    a word of 5-8 letters after at least one word of the line; the context is the
             words before it (at most 12 characters) and its first ceil(n/2) letters, the
             target its other letters (LAMBADA's cloze on a character scale)
  wordorder  3 distinct words after 1-2 words of context; distractors: 3 of the other 5 orders
  spelling   2-3 words after 1-2 words; distractors: 3 copies, each with one pair of adjacent,
             different letters inside a word swapped ('shall' -> 'sahll')
A choice task's choices have equal lengths, so `acc` and `acc_norm` agree; chance is 1/4.

Long-context tasks, which need a few hundred characters of context (k-shot examples are joined
by a blank line):

    shakespeare_lastword  cloze   the last word of a speech (LAMBADA-style), tiny_shakespeare
    shakespeare_nextline  choice  the next line of a speech among 4 lines, tiny_shakespeare
    austen_nextsent       choice  the next sentence among 4 sentences, Jane Austen

Their distractors are lines / sentences of similar length from the same split, so a model
cannot win by preferring short choices.

Only held-out text is used: tiny_shakespeare's test split (the last 5% of characters) gives the
eval examples and its validation split (the 5% before) the few-shot examples; for Austen, the
last 5% of austen.txt (what `data.holdout_fraction=0.05` holds out) gives few-shot examples from
its first quarter and eval examples from the rest. Every text is limited to tiny_shakespeare's
65 characters (Austen's double quotes become single quotes, underscores are dropped, anything
else outside the set drops the example), so a character model of tiny_shakespeare can read all
tasks. Positions and distractors are drawn with fixed seeds: the same corpora always give the
same files (tests/test_tasks.py checks).
"""

import argparse
import itertools
import json
import os
import random
import re

EVAL, FEWSHOT = 400, 100
SEED = 1234
MAX_CHARS = 21       # context + answer of one example; 6 examples + 5 newlines <= 131
ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Col.", "Capt.")
WORD = re.compile(r"[A-Za-z]{5,8}")


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


def shakespeare_lines(text):
    """The spoken lines of a slice (no speaker names, no blank lines), each a list of words."""
    lines = [ln.split() for ln in text.split("\n")[1:-1]]
    return [ln for ln in lines if ln and not (len(ln) <= 3 and ln[-1].endswith(":"))]


def austen_lines(text, charset):
    """Austen's sentences in `charset`, each a list of words."""
    return [s.split() for sents in sentences(text, charset) for s in sents if s]


def fit_context(words, end, limit):
    """The most words before index `end` (at least one) whose text has <= `limit` chars."""
    start = end - 1
    while start > 0 and len(" ".join(words[start - 1:end])) <= limit:
        start -= 1
    text = " ".join(words[start:end])
    return text if end > 0 and len(text) <= limit else None


def wordend(lines, n, rng):
    rows = []
    for words in lines:
        options = []
        for i in range(1, len(words)):
            m = WORD.fullmatch(words[i].rstrip(",.;:!?'"))
            context = fit_context(words, i, 12)
            if m and context:
                word = m.group(0)
                cut = (len(word) + 1) // 2
                options.append({"context": f"{context} {word[:cut]}", "target": word[cut:]})
        if options:
            rows.append(rng.choice(options))
    return rng.sample(rows, min(n, len(rows)))


def spans(words, count):
    """(context, continuation) pairs: 1-2 words, then `count` words, <= MAX_CHARS in all."""
    out = []
    for i in range(1, len(words) - count + 1):
        cont = words[i:i + count]
        context = fit_context(words, i, MAX_CHARS - len(" ".join(cont)) - 1)
        if context and len(context.split()) <= 2:
            out.append((context, cont))
    return out


def swaps(text):
    """Every copy of `text` with one pair of adjacent, different letters of a word swapped."""
    return [text[:i] + text[i + 1] + text[i] + text[i + 2:] for i in range(len(text) - 1)
            if text[i].isalpha() and text[i + 1].isalpha() and text[i] != text[i + 1]]


def choice_row(context, true, distractors, rng):
    choices = [true] + distractors
    rng.shuffle(choices)
    return {"context": context, "choices": [" " + c for c in choices],
            "answer": choices.index(true)}


def wordorder(lines, n, rng):
    rows = []
    for words in lines:
        options = [(c, w) for c, w in spans(words, 3) if len(set(w)) == 3]
        if options:
            context, cont = rng.choice(options)
            others = [" ".join(p) for p in itertools.permutations(cont) if list(p) != cont]
            rows.append(choice_row(context, " ".join(cont), rng.sample(others, 3), rng))
    return rng.sample(rows, min(n, len(rows)))


def spelling(lines, n, rng):
    rows = []
    for words in lines:
        options = [(c, " ".join(w)) for k in (3, 2) for c, w in spans(words, k)
                   if len(set(swaps(" ".join(w)))) >= 3]
        if options:
            context, true = rng.choice(options)
            others = sorted(set(swaps(true)) - {true})
            rows.append(choice_row(context, true, rng.sample(others, 3), rng))
    return rng.sample(rows, min(n, len(rows)))


def write(out, name, fmt, source, splits, separator="\n"):
    directory = os.path.join(out, name)
    os.makedirs(directory, exist_ok=True)
    spec = {"name": name, "format": fmt, "eval": "eval.jsonl", "fewshot": "fewshot.jsonl",
            "separator": separator, "seed": SEED, "source": source}
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
    held, charset = austen[int(0.95 * len(austen)):], set(shakespeare)
    src = "tiny_shakespeare: eval from the test split (last 5%), few-shot from validation"
    austen_src = ("austen.txt: the last 5% (held out); few-shot from its first quarter, eval "
                  "the rest")
    for name, fmt, fn in (("shakespeare_wordend", "cloze", wordend),
                          ("shakespeare_wordorder", "choice", wordorder),
                          ("shakespeare_spelling", "choice", spelling)):
        rng = random.Random(f"{SEED}:{name}")
        write(args.out, name, fmt, src, {"eval": fn(shakespeare_lines(test), EVAL, rng),
                                         "fewshot": fn(shakespeare_lines(valid), FEWSHOT, rng)})
    rng = random.Random(f"{SEED}:austen_wordend")
    write(args.out, "austen_wordend", "cloze", austen_src,
          {"eval": wordend(austen_lines(held[len(held) // 4:], charset), EVAL, rng),
           "fewshot": wordend(austen_lines(held[:len(held) // 4], charset), FEWSHOT, rng)})
    for name, fmt, fn in (("shakespeare_lastword", "cloze", lastword),
                          ("shakespeare_nextline", "choice", nextline)):
        rng = random.Random(f"{SEED}:{name}")
        write(args.out, name, fmt, src, {"eval": fn(test, EVAL, rng),
                                         "fewshot": fn(valid, FEWSHOT, rng)}, "\n\n")
    rng = random.Random(f"{SEED}:austen_nextsent")
    write(args.out, "austen_nextsent", "choice", austen_src,
          {"eval": nextsent(held[len(held) // 4:], charset, EVAL, rng),
           "fewshot": nextsent(held[:len(held) // 4], charset, FEWSHOT, rng)}, "\n\n")


if __name__ == "__main__":
    main()
