"""Writes circuits/stories260K/pronoun.jsonl: a pronoun task for the stories260K model.

"Once upon a time, there was a girl named Lily. One day, Lily went to the park. At the park,"
-> " she" (distractor " he"); the boy prompts (Tim, Timmy) the other way round. Every filler of a
slot has the same token count under the model's tokenizer (names 1 token, `girl`/`boy` and the
places 3), so every prompt has the same layout. Each prompt's paired reference swaps the gender
(noun and name), so mean ablation removes exactly the gender information.

Usage: python scripts/make_stories_pronoun.py
"""

import json
from pathlib import Path

TEMPLATE = (
    "Once upon a time, there was a {NOUN} named {NAME}. One day, {S2} went to the {PLACE}."
    " At the {P2},"
)
PLACES = ["beach", "farm", "hill", "house", "lake", "park", "pond", "river", "sea", "store", "zoo"]
PEOPLE = [("girl", "Lily", " she", " he"), ("boy", "Tim", " he", " she"), ("boy", "Timmy", " he", " she")]


def fillers(noun, name, place):
    return {"NOUN": noun, "NAME": name, "S2": name, "PLACE": place, "P2": place}


def main():
    out = Path(__file__).resolve().parent.parent / "circuits/stories260K/pronoun.jsonl"
    lines = []
    for place in PLACES:
        for noun, name, answer, distractor in PEOPLE:
            other = ("boy", "Tim") if noun == "girl" else ("girl", "Lily")
            record = {
                "template": TEMPLATE,
                "fillers": fillers(noun, name, place),
                "answer": answer,
                "distractor": distractor,
                "reference": {"fillers": fillers(*other, place)},
            }
            lines.append(json.dumps(record))
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({len(lines)} prompts)")


if __name__ == "__main__":
    main()
