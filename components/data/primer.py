"""A generated everyday-English primer: the world knowledge the bundled instruction tasks draw on.

A language model learns words and facts in pretraining and how to follow instructions in
fine-tuning. The bundled CPython docs never mention a horse, "chien" or what 23 plus 17 is,
so a model pretrained on them alone must learn the tasks' vocabulary during instruction
tuning, which a small model does poorly (translation reached 6% exact match without the
primer, 26-39% with it; sums stayed hard either way). This primer puts that knowledge where
it belongs, in the pretraining text:

- short stories over the tasks' nouns, verbs and adjectives ("The cat sleeps. The car is red."),
- a French / Spanish glossary, one word at a time ("In French, cat is chat."),
- addition facts over the arithmetic family's range ("23 plus 17 is 40."),
- records laid out like the copy-field inputs ("name: Ada; city: Rome; pet: dog"),
- counted lists and sentences about people ("A list of 3 words: hat chair tree.").

It never uses an instruction's wording or the prompt template, and has no reversed or sorted
lists: those skills are left for fine-tuning, and the base model's exact match on the
held-out tasks stays near zero (the finetune step logs it before training).
"""

from __future__ import annotations

import random

from components.data.vocabulary import DICTIONARY, FIELDS, LANGUAGES, WORDS, sentence

_NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()


def _story(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(3))


def _glossary(rng: random.Random) -> str:
    word, first = rng.choice(list(DICTIONARY)), rng.randrange(len(LANGUAGES))
    other = 1 - first
    return (f"In {LANGUAGES[first]}, {word} is {DICTIONARY[word][first]}. "
            f"The {word} in {LANGUAGES[other]} is {DICTIONARY[word][other]}.")


def _sum(rng: random.Random) -> str:
    a, b = rng.randrange(50), rng.randrange(50)
    return rng.choice([f"{a} plus {b} is {a + b}.", f"{a} + {b} = {a + b}", f"The sum of {a} and {b} is {a + b}."])


def _record(rng: random.Random) -> str:
    fields = rng.sample(list(FIELDS), rng.randint(2, 4))
    return "; ".join(f"{f}: {rng.choice(FIELDS[f])}" for f in fields)


def _list(rng: random.Random) -> str:
    words = rng.sample(WORDS, rng.randint(2, 9))
    return rng.choice([f"{_NUMBER_WORDS[len(words)].capitalize()} things: {' '.join(words)}.",
                       f"A list of {len(words)} words: {' '.join(words)}."])


def _people(rng: random.Random) -> str:
    return (f"{rng.choice(FIELDS['name'])} lives in {rng.choice(FIELDS['city'])} "
            f"with a {rng.choice(FIELDS['color'])} {rng.choice(FIELDS['pet'])}.")


KINDS = (_story, _glossary, _sum, _record, _list, _people)


def primer_documents(n: int, seed: int = 0) -> list[str]:
    """`n` documents of 4-8 lines each (~230 characters), cycling through the six kinds above.

    Deterministic: the same (n, seed) gives the same text on every machine.
    """
    rng = random.Random(f"primer:{seed}")
    return ["\n".join(KINDS[i % len(KINDS)](rng) for _ in range(rng.randint(4, 8))) for i in range(n)]
