"""The everyday-English vocabulary the bundled instruction tasks (instructions.py) and the pretraining
primer (primer.py) are written in: nouns, verbs, adjectives, record fields and a French / Spanish gloss.

The primer puts these words in the pretraining text and the tasks ask about them, so both read them here.
"""

from __future__ import annotations

import random

WORDS = (
    "apple bird boat book cake car cat chair cloud cup desk dog door egg fish flag frog hat hill "
    "horse house key kite lamp leaf lion moon nest pen pig rain ring road rock rose ship shoe star sun tree"
).split()
FIELDS = {
    "name": "Ada Bob Cleo Dan Eve Finn Gus Hana Ivan Jo Kim Leo Mia Nora Omar Pia".split(),
    "city": "Rome Paris Oslo Lima Cairo Tokyo Delhi Quito Berlin Madrid Dublin Seoul".split(),
    "color": "red blue green black white pink gray brown".split(),
    "pet": "cat dog fish bird frog horse pig lion".split(),
}
VERBS = "runs sleeps eats jumps sings swims waits falls".split()
ADJECTIVES = "big small red blue old new warm cold".split()
# English -> (French, Spanish): a word-for-word gloss, so every prompt has one exact answer.
DICTIONARY = {
    en: (fr, es)
    for en, fr, es in map(str.split, (
        "cat chat gato, dog chien perro, house maison casa, water eau agua, book livre libro, red rouge rojo, "
        "blue bleu azul, green vert verde, black noir negro, white blanc blanco, big grand grande, "
        "small petit chico, sun soleil sol, moon lune luna, sea mer mar, bread pain pan, milk lait leche, "
        "apple pomme manzana, car voiture coche, night nuit noche, man homme hombre, woman femme mujer, "
        "friend ami amigo, city ville ciudad, fish poisson pez, horse cheval caballo, door porte puerta, "
        "hand main mano, cheese fromage queso, wine vin vino"
    ).split(", "))
}
LANGUAGES = ("French", "Spanish")


def sentence(rng: random.Random) -> str:
    """One short sentence over the task words: "The cat sleeps." or "The car is red."."""
    return (f"The {rng.choice(WORDS)} {rng.choice(VERBS)}." if rng.random() < 0.5
            else f"The {rng.choice(WORDS)} is {rng.choice(ADJECTIVES)}.")
