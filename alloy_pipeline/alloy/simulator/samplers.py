"""Samplers: functions that draw a realistic attribute value from a random generator.

The demo council and the designs synthesized from AQS files draw their values from the same
samplers, so both look like a council's data (Alloy datetimes, references, street addresses,
GeoJSON points) and both change the same way when the simulator edits an item.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from alloy_pipeline.alloy.simulator.dataset import SECONDS_PER_YEAR, Sampler

YEAR_2023 = datetime(2023, 1, 1, tzinfo=UTC)

# fmt: off
STREET_NAMES = (
    "High Street", "Station Road", "Church Lane", "Mill Lane", "Victoria Road", "Park Avenue",
    "London Road", "Queen Street", "King's Road", "The Crescent", "Albert Road", "Manor Way",
    "Orchard Close", "Green Lane", "Bridge Street", "Market Place", "North Street", "School Lane",
    "Chapel Street", "Elm Grove", "St John's Road", "Castle Hill", "Meadow View", "Windmill Rise",
    "Brook Street", "Cherry Tree Walk", "Priory Road", "Kingsway", "Water Lane", "Oak Drive",
)
TOWNS = ("Ashford", "Maidstone", "Tonbridge", "Sevenoaks", "Dartford", "Faversham")
_GIVEN_NAMES = ("Amira", "Ben", "Chloe", "Dev", "Erin", "Femi", "Grace", "Hassan", "Isla", "Jon", "Kofi", "Lena")
_FAMILY_NAMES = ("Okafor", "Smith", "Patel", "Nowak", "Jones", "Ahmed", "Murphy", "Chen", "Williams", "Kaur")
_WORDS = (
    "access", "bin", "blocked", "collected", "corner", "crew", "damaged", "gate", "kerb", "lane",
    "missed", "resident", "returned", "side", "site", "tagged", "van", "wall", "waste", "yard",
)
# fmt: on


def alloy_datetime(moment: datetime) -> str:
    """UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form Alloy uses in exports and DateTime filters."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def moment_in_2023(rng: random.Random) -> datetime:
    """A last-edit moment in 2023, to the millisecond: before any test's watermark."""
    return YEAR_2023 + timedelta(seconds=rng.randrange(SECONDS_PER_YEAR), milliseconds=rng.randrange(1000))


def date_2023(rng: random.Random) -> str:
    return alloy_datetime(YEAR_2023 + timedelta(minutes=rng.randrange(SECONDS_PER_YEAR // 60)))


def pick(*choices: str | None) -> Sampler:
    return lambda rng: rng.choice(choices)


def weighted(weights: Mapping[str, int]) -> Sampler:
    """Draw a key of `weights`, as often as its weight says (most jobs are not urgent)."""
    choices, counts = list(weights), list(weights.values())
    return lambda rng: rng.choices(choices, weights=counts)[0]


def reference(prefix: str) -> Sampler:
    return lambda rng: f"{prefix}-{rng.randrange(10**6):06d}"


def maybe(sampler: Sampler, empty_one_in: int) -> Sampler:
    """`sampler`, but empty (None) about once in `empty_one_in` draws."""
    return lambda rng: None if rng.randrange(empty_one_in) == 0 else sampler(rng)


def digits(count: int) -> Sampler:
    """A number of exactly `count` digits, as UPRNs (12) and USRNs (8) are."""
    return lambda rng: str(rng.randrange(10 ** (count - 1), 10**count))


def amount(rng: random.Random) -> str:
    return f"{rng.randrange(0, 50_000) / 100:.2f}"


def location(rng: random.Random) -> str:
    return f"{rng.randrange(1, 160)} {rng.choice(STREET_NAMES)}, {rng.choice(TOWNS)}"


def postcode(rng: random.Random) -> str:
    letters = "ABDEFGHJLNPQRSTUWXYZ"
    return f"ME{rng.randrange(1, 20)} {rng.randrange(10)}{rng.choice(letters)}{rng.choice(letters)}"


def person_name(rng: random.Random) -> str:
    return f"{rng.choice(_GIVEN_NAMES)} {rng.choice(_FAMILY_NAMES)}"


def email(rng: random.Random) -> str:
    return f"{rng.choice(_GIVEN_NAMES).lower()}.{rng.choice(_FAMILY_NAMES).lower()}{rng.randrange(100)}@example.org"


def geometry_point(rng: random.Random) -> str:
    """A GeoJSON point in Kent, as Alloy exports `attributes_itemsGeometry`."""
    point = {"type": "Point", "coordinates": [round(rng.uniform(0.2, 1.0), 6), round(rng.uniform(51.1, 51.4), 6)]}
    return json.dumps(point, separators=(",", ":"))


def short_text(rng: random.Random) -> str:
    """A few words; now and then with a comma, quotes or a line break, which CSV must quote."""
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(2, 6))).capitalize()
    roll = rng.randrange(12)
    if roll == 0:
        return f'{text}, "{rng.choice(_WORDS)}"'
    if roll == 1:
        return f"{text}.\n{rng.choice(_WORDS).capitalize()}"
    return text
