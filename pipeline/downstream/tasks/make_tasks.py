"""Write the items of the ParScale smoke tasks (``parscale_mc``, ``parscale_ppl``, ``parscale_gen``)
as the jsonl files next to this script.

Every item is written here, for this project: none is copied from a benchmark. The items are
fixed lists plus a few made from templates with a seeded ``random.Random``, so a run always writes
the same bytes::

    python pipeline/downstream/tasks/make_tasks.py           # (re)write the three jsonl files
    python pipeline/downstream/tasks/make_tasks.py --check   # exit 1 if a committed file differs

Only the standard library is used; the script is not imported by the package.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 26  # issue 26

# --------------------------------------------------------------------------------------------------
# parscale_mc: a context and its choices; the item's text is the context, each choice is appended
# to it as written (target_delimiter is ""), so a choice carries its own leading space.
# The first choice of every entry is the right one; the order is shuffled when the file is written.

#: questions about Python, in words
PYTHON_FACTS = [
    ("In Python, a function is defined with the keyword", [" def", " func", " fn", " function"]),
    ("In Python, a class is defined with the keyword", [" class", " struct", " record", " object"]),
    ("In Python, a module is loaded with the keyword", [" import", " include", " require", " using"]),
    ("In Python, the constant for the absence of a value is", [" None", " null", " nil", " undefined"]),
    ("In Python, the two boolean constants are True and", [" False", " Untrue", " No", " Off"]),
    ("In Python, the keyword that leaves a loop early is", [" break", " exit", " stop", " leave"]),
    ("In Python, the keyword that goes on with the next turn of a loop is", [" continue", " next", " skip", " again"]),
    ("In Python, a comment starts with the character", [" #", " //", " --", " %"]),
    ("In Python, the length of a list is returned by the built-in function", [" len", " length", " size", " count"]),
    (
        "In Python, an exception is caught in a block that starts with the keyword",
        [" try", " catch", " guard", " test"],
    ),
]

#: a piece of Python code and how it goes on
PYTHON_CODE = [
    ("for i in range(10)", [":", ";", " do", " {"]),
    ("class Point:\n    def __init__(", ["self", "this", "me", "that"]),
    ("if __name__ ==", [' "__main__":', ' "__init__":', ' "__file__":', ' "__name__":']),
    ("try:\n    value = int(text)\nexcept", [" ValueError:", " ValueMistake:", " WrongValue:", " BadInt:"]),
    ("import os\n\npath = os.path.", ["join(", "glue(", "concat(", "attach("]),
    ("with open(filename) as", [" f:", " f;", " f {", " f then"]),
    (
        "class Child(Base):\n    def __init__(self):\n        super().",
        ["__init__()", "__start__()", "__begin__()", "__make__()"],
    ),
    ("items = [1, 2, 3]\nitems.", ["append(4)", "push(4)", "add_last(4)", "put(4)"]),
    ("if not isinstance(name, str):\n    raise", [" TypeError(", " TypingError(", " KindError(", " ClassError("]),
    ("import sys\n\nargs = sys.", ["argv", "argz", "params", "cmdline"]),
    ("while", [" True:", " Forever:", " Always:", " Yes:"]),
    ("class Shape:\n    @", ["property", "propriety", "attribute", "field"]),
    ("from collections import", [" OrderedDict", " OrderedMap", " SortedHash", " LinkedDict"]),
]

#: common English phrases and how they go on
ENGLISH = [
    ("Once upon a", [" time", " table", " river", " window"]),
    ("Thank you very", [" much", " tall", " green", " slowly"]),
    ("Monday, Tuesday,", [" Wednesday", " Friday", " Sunday", " Monday"]),
    ("January, February,", [" March", " June", " October", " January"]),
    ("The opposite of hot is", [" cold", " loud", " tall", " soft"]),
    ("The opposite of up is", [" down", " left", " blue", " fast"]),
    ("one, two, three,", [" four", " six", " ten", " one"]),
    ("Good morning, how are", [" you", " table", " seven", " blue"]),
    ("It is raining, so take an", [" umbrella", " elephant", " orange", " engine"]),
    ("Water freezes at zero degrees", [" Celsius", " Kelvin", " north", " sideways"]),
    ("A week has seven", [" days", " legs", " colors", " rivers"]),
    ("Cats and", [" dogs", " spoons", " clouds", " numbers"]),
]


def mc_items(rng: random.Random) -> list[dict]:
    raw: list[tuple[str, str, list[str]]] = []
    raw += [("python_fact", c, ch) for c, ch in PYTHON_FACTS]
    raw += [("python_code", c, ch) for c, ch in PYTHON_CODE]
    raw += [("english", c, ch) for c, ch in ENGLISH]
    # numbers: which of two is larger / smaller, and a sum among near misses
    for i in range(10):
        a, b = rng.sample(range(1, 100), 2)
        word, right = ("larger", max(a, b)) if i % 2 == 0 else ("smaller", min(a, b))
        raw.append(
            (
                "number_compare",
                f"Which number is {word}, {a} or {b}? The {word} number is",
                [f" {right}", f" {a + b - right}"],
            )
        )
    for _ in range(5):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        s = a + b
        raw.append(("number_sum", f"{a} + {b} =", [f" {s}", f" {s + 1}", f" {s - 1}", f" {s + 10}"]))

    items = []
    for n, (kind, context, choices) in enumerate(raw):
        right = choices[0]
        order = list(choices)
        rng.shuffle(order)
        items.append({"id": n, "kind": kind, "context": context, "choices": order, "label": order.index(right)})
    return items


# --------------------------------------------------------------------------------------------------
# parscale_ppl: whole documents, scored by rolling loglikelihood

#: Python snippets: each template filled with two sets of names
PY_SNIPPETS = [
    (
        "def {f}({a}, {b}):\n    return {a} + {b}\n\n\nprint({f}(2, 3))\n",
        [{"f": "add", "a": "left", "b": "right"}, {"f": "total", "a": "price", "b": "tax"}],
    ),
    (
        "class {C}:\n    def __init__(self, {a}):\n        self.{a} = {a}\n\n    def __repr__(self):\n"
        '        return f"{C}({{self.{a}!r}})"\n',
        [{"C": "Box", "a": "content"}, {"C": "Node", "a": "value"}],
    ),
    (
        "{a}s = [3, 1, 2]\n{a}s.sort()\nfor {a} in {a}s:\n    print({a})\n",
        [{"a": "number"}, {"a": "item"}],
    ),
    (
        "import os\n\n\ndef {f}({a}):\n    if not os.path.exists({a}):\n        return None\n"
        "    with open({a}) as fh:\n        return fh.read()\n",
        [{"f": "read_text", "a": "path"}, {"f": "load_config", "a": "filename"}],
    ),
    (
        "try:\n    {a} = int({b})\nexcept ValueError:\n    {a} = 0\n",
        [{"a": "count", "b": "text"}, {"a": "port", "b": "value"}],
    ),
    (
        "{a}_by_{b} = {{}}\nfor {a}, {b} in pairs:\n    {a}_by_{b}[{b}] = {a}\n",
        [{"a": "name", "b": "key"}, {"a": "user", "b": "uid"}],
    ),
]

ENGLISH_DOCS = [
    "The train leaves the station at nine in the morning and arrives in the city before noon.",
    "She opened the window, looked at the garden, and decided to plant tomatoes this year.",
    "A small program reads a file, counts the words in it, and prints the ten most common ones.",
    "The library closes early on Sundays, so we returned the books on Saturday afternoon.",
    "Every morning the baker lights the oven, mixes the dough, and waits for the bread to rise.",
    "When the test failed, the engineer read the log line by line until she found the typo.",
    "The river was calm after the storm, and the children threw small stones into the water.",
    "He wrote the numbers one to ten on the board and asked the class to add them up.",
]


def ppl_items() -> list[dict]:
    docs = [("python", t.format(**names)) for t, name_sets in PY_SNIPPETS for names in name_sets]
    docs += [("english", t) for t in ENGLISH_DOCS]
    return [{"id": n, "kind": kind, "text": text} for n, (kind, text) in enumerate(docs)]


# --------------------------------------------------------------------------------------------------
# parscale_gen: a prompt whose answer ends its last line; the model generates until "\n" and its
# output, stripped of whitespace, must equal the answer


def _sequence(start: int, step: int, sep: str, show=str) -> tuple[str, str]:
    """Three rows of five terms, each row one step on from the last; the third row lacks its last
    term, which is the answer."""
    rows = [[show(start + (r + k) * step) for k in range(5)] for r in range(3)]
    prompt = "\n".join(sep.join(row) for row in rows[:2]) + "\n" + sep.join(rows[2][:4]) + sep.rstrip()
    return prompt, rows[2][4]


PY_GEN = [
    ("def add(a, b):\n    return a +", "b"),
    ("def scale(value, factor):\n    return value *", "factor"),
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y =", "y"),
    ("class User:\n    def __init__(self, name, age):\n        self.name = name\n        self.age =", "age"),
    ("a = 1\nb = 2\nc = 3\nd =", "4"),
    ("total = 0\nfor value in values:\n    total +=", "value"),
    ("if x > 0:\n    sign = 1\nelse:\n    sign =", "-1"),
    ("def is_empty(items):\n    return len(items) ==", "0"),
]


def gen_items(rng: random.Random) -> list[dict]:
    raw = []
    for step in (1, 1, 2, 2, 3, 5, 10, 10):
        raw.append(("counting", *_sequence(rng.randint(1, 30), step, ", ")))
    for start in rng.sample(range(19), 4):
        raw.append(("letters", *_sequence(start, 1, " ", show=lambda i: "abcdefghijklmnopqrstuvwxyz"[i])))
    raw += [("python", p, a) for p, a in PY_GEN]
    return [{"id": n, "kind": kind, "prompt": p, "answer": a} for n, (kind, p, a) in enumerate(raw)]


# --------------------------------------------------------------------------------------------------


def render() -> dict[str, str]:
    """The three files' names and contents."""
    rng = random.Random(SEED)
    tables = {
        "parscale_mc.jsonl": mc_items(rng),
        "parscale_ppl.jsonl": ppl_items(),
        "parscale_gen.jsonl": gen_items(rng),
    }
    return {name: "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows) for name, rows in tables.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({text.count(chr(10))} items)")
    if stale:
        print("out of date (run make_tasks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
