"""Transcripts as they are spoken: numbers and common symbols written out in English words, so that the text
Dia trains on says what the audio says ("3.5%" -> "three point five percent"). Everything else, including
disfluencies and non-verbal events such as "(laughs)", is kept as the recogniser gave it."""

from __future__ import annotations

import re

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
SYMBOLS = {"%": " percent", "&": " and ", "+": " plus ", "=": " equals ", "@": " at "}
CURRENCIES = {"$": "dollars", "£": "pounds", "€": "euros"}
ORDINAL_ENDINGS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
NUMBER = re.compile(r"(?P<currency>[$£€])?(?P<number>\d[\d,]*(?:\.\d+)?)(?P<ordinal>st|nd|rd|th)?\b")


def number_words(n: int) -> str:
    """A non-negative integer in words: 1205 -> "one thousand two hundred five"."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    for scale, name in SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return f"{number_words(head)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in ORDINAL_ENDINGS:
        last = ORDINAL_ENDINGS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()


def _spell(match: re.Match) -> str:
    digits = match["number"].replace(",", "")
    whole, _, fraction = digits.partition(".")
    if len(whole) > 12:  # an id or a phone number: digit by digit
        words = " ".join(ONES[int(d)] for d in whole)
    else:
        words = number_words(int(whole))
    if fraction:
        words += " point " + " ".join(ONES[int(d)] for d in fraction)
    if match["ordinal"] and not fraction:
        words = _ordinal(words)
    if match["currency"]:
        words += " " + CURRENCIES[match["currency"]]
    return words


def spoken(text: str) -> str:
    """`text` with numbers, currency amounts, ordinals and the symbols % & + = @ in words."""
    text = NUMBER.sub(_spell, text)
    for symbol, words in SYMBOLS.items():
        text = text.replace(symbol, words)
    return " ".join(text.split()).replace(" ,", ",").replace(" .", ".")
