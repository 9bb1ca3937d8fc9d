"""The words of the needle tasks: the default keys and the needle sentence.

Both the corpus writer (`lwm.data.synth`, which puts this vocabulary into tokenizer corpora) and
the needle-task builder (`lwm.data.needles`) use them; they live here so neither imports the other.
"""

from __future__ import annotations

DEFAULT_KEYS = (
    "Lisbon",
    "Nairobi",
    "Osaka",
    "Quito",
    "Tallinn",
    "Hanoi",
    "Perth",
    "Bergen",
    "Cusco",
    "Dakar",
    "Krakow",
    "Lyon",
    "Muscat",
    "Porto",
    "Seville",
    "Tbilisi",
    "Valparaiso",
    "Zagreb",
    "Accra",
    "Bilbao",
    "Cork",
    "Dublin",
    "Geneva",
    "Havana",
    "Izmir",
    "Jaipur",
    "Kyoto",
    "Lima",
    "Malaga",
    "Nantes",
    "Oslo",
    "Pune",
)


def needle_sentence(key: str, value: str) -> str:
    return f"The special magic {key} number is: {value}."
