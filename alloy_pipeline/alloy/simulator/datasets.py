"""The datasets the simulator serves: a small demo council, and a big cheap synthetic one.

Both are derived from a seed, so the same seed gives the same items and tests can assert exact
rows. The synthetic dataset computes its items on demand, for million-row benchmarks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from alloy_pipeline.alloy.simulator.dataset import (
    SECONDS_PER_YEAR,
    Attribute,
    Dataset,
    Design,
    Item,
    ItemTable,
    LinkAttribute,
    Sampler,
    link_count,
)

_YEAR_2023 = datetime(2023, 1, 1, tzinfo=UTC)


def _moment_in_2023(rng: random.Random) -> datetime:
    return _YEAR_2023 + timedelta(seconds=rng.randrange(SECONDS_PER_YEAR), milliseconds=rng.randrange(1000))


def _alloy_datetime(moment: datetime) -> str:
    """UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form Alloy uses in exports and DateTime filters."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# fmt: off
_STREET_NAMES = (
    "High Street", "Station Road", "Church Lane", "Mill Lane", "Victoria Road", "Park Avenue",
    "London Road", "Queen Street", "King's Road", "The Crescent", "Albert Road", "Manor Way",
    "Orchard Close", "Green Lane", "Bridge Street", "Market Place", "North Street", "School Lane",
    "Chapel Street", "Elm Grove", "St John's Road", "Castle Hill", "Meadow View", "Windmill Rise",
    "Brook Street", "Cherry Tree Walk", "Priory Road", "Kingsway", "Water Lane", "Oak Drive",
)
_TOWNS = ("Ashford", "Maidstone", "Tonbridge", "Sevenoaks", "Dartford", "Faversham")
_STATUS_WEIGHTS = MappingProxyType({"Open": 35, "In Progress": 20, "Closed": 45})
_ROAD_CLASS_WEIGHTS = MappingProxyType({"A Road": 2, "B Road": 3, "Unclassified": 10})
_CONTAINER_TYPE_WEIGHTS = MappingProxyType(
    {"240L Wheelie Bin": 10, "1100L Eurobin": 3, "660L Eurobin": 2, "Recycling Box": 4, "Food Caddy": 4}
)
_PRIORITY_WEIGHTS = MappingProxyType({"Low": 4, "Medium": 6, "High": 3, "Urgent": 1})
_CONDITION_WEIGHTS = MappingProxyType({"Good": 5, "Fair": 4, "Poor": 2, "Blocked": 1})
_JOB_TYPES = (
    "Bin Delivery", "Bin Repair", "Bin Removal", "Missed Collection", "Bin Replacement", "Lid Replacement"
)
_SURFACES = ("Brick wall", "Bus shelter", "Shop shutter", "Bridge", "Road sign", "Telecom cabinet", "Bench")
_JOB_NOTES: tuple[str | None, ...] = (
    None, None, None, None,
    "Bin left at kerbside after collection",
    "Access via rear lane, gate code 4412",
    'Resident reports bin "disappeared" overnight',
    "Lid hinge broken, replace lid only",
    "Called twice.\nNo answer at the door.",
    'Crew note: "blocked by parked van", will retry Thursday',
    "Assisted collection, bin kept in front garden",
    "Contaminated recycling; tag left on bin",
    'Wheel missing, resident says "it has been like this for weeks"',
    "Delivery to flat 3, leave with concierge",
    "Duplicate of an earlier job,\nclosed by supervisor",
)
_GRAFFITI_DESCRIPTIONS: tuple[str | None, ...] = (
    None, None,
    'Tag reads "KZ", approx 2m x 1m, blue spray paint',
    "Offensive wording on bus shelter.\nPriority removal requested.",
    "Small tag on telecom cabinet",
    "Mural-style piece, owner consent unknown",
    "Black marker tags on both sides of the underpass",
    'Caller says it\'s "the third time this month", wants CCTV checked',
    "Etched into glass; needs panel replacement, not cleaning",
    "Paint on listed wall -\ncheck with conservation officer first",
)
_GULLY_INSPECTOR_NOTES: tuple[str | None, ...] = (
    None, None, None,
    "Silt to grating level, jetted",
    "Grating cracked, make safe",
    'Lid "rocking" when driven over',
    "Could not access,\ncar parked over gully",
    "Running freely",
    "Leaf fall, recheck in November",
)
_GULLY_CREW_NOTES: tuple[str | None, ...] = (
    None, None, None, None,
    "Cleansed, 2 bags of silt removed",
    "Tanker full, return tomorrow",
    'Root ingress; refer to "drainage team"',
    "Traffic management needed, busy junction",
    "Connection collapsed?\nCCTV survey booked",
)
# fmt: on


def _pick(*choices: str | None) -> Sampler:
    return lambda rng: rng.choice(choices)


def _weighted(weights: Mapping[str, int]) -> Sampler:
    """Draw a key of `weights`, as often as its weight says (most jobs are not urgent)."""
    choices, counts = list(weights), list(weights.values())
    return lambda rng: rng.choices(choices, weights=counts)[0]


def _reference(prefix: str) -> Sampler:
    return lambda rng: f"{prefix}-{rng.randrange(10**6):06d}"


def _maybe(sampler: Sampler, empty_one_in: int) -> Sampler:
    """`sampler`, but empty (None) about once in `empty_one_in` draws."""
    return lambda rng: None if rng.randrange(empty_one_in) == 0 else sampler(rng)


def _date_2023(rng: random.Random) -> str:
    return _alloy_datetime(_YEAR_2023 + timedelta(minutes=rng.randrange(SECONDS_PER_YEAR // 60)))


def _location(rng: random.Random) -> str:
    return f"{rng.randrange(1, 160)} {rng.choice(_STREET_NAMES)}, {rng.choice(_TOWNS)}"


def _usrn(rng: random.Random) -> str:
    return str(rng.randrange(10**7, 10**8))


def _serial_number(rng: random.Random) -> str:
    return f"SN{rng.getrandbits(32):08X}"


def _depth_mm(rng: random.Random) -> str:
    return str(rng.randrange(0, 300, 5))


def _design(code: str, name: str, attributes: Iterable[tuple[str, str, Sampler]], *links: LinkAttribute) -> Design:
    return Design(code, name, tuple(Attribute(*attribute) for attribute in attributes), links)


def _demo_designs() -> tuple[Design, ...]:
    """The five designs of the demo council, linked designs first so links can be sampled."""
    title = "attributes_itemsTitle"
    # fmt: off
    street = _design("designs_street", "Street", [
        (title, "Title", _pick(*_STREET_NAMES)),
        ("attributes_streetUsrn", "USRN", _usrn),
        ("attributes_streetTown", "Town", _pick(*_TOWNS)),
        ("attributes_streetRoadClass", "Road Class", _weighted(_ROAD_CLASS_WEIGHTS)),
    ])
    container = _design("designs_wasteContainer", "Waste Container", [
        (title, "Title", _reference("WC")),
        ("attributes_wasteContainerType", "Container Type", _weighted(_CONTAINER_TYPE_WEIGHTS)),
        ("attributes_wasteContainerSerialNumber", "Serial Number", _serial_number),
        ("attributes_wasteContainerLocation", "Location", _location),
        ("attributes_wasteContainerInstalledDate", "Installed Date", _maybe(_date_2023, 5)),
    ])
    job = _design("designs_wasteContainerJob", "Waste Container Job", [
        (title, "Title", _reference("WCJ")),
        ("attributes_jobStatus", "Status", _weighted(_STATUS_WEIGHTS)),
        ("attributes_jobType", "Job Type", _pick(*_JOB_TYPES)),
        ("attributes_jobPriority", "Priority", _weighted(_PRIORITY_WEIGHTS)),
        ("attributes_jobRaisedDate", "Raised Date", _date_2023),
        ("attributes_jobNotes", "Notes", _pick(*_JOB_NOTES)),
    ], LinkAttribute("attributes_jobAssignedContainer", "Assigned Container", container.code))
    graffiti = _design("designs_graffitiReport", "Graffiti Report", [
        (title, "Title", _reference("GR")),
        ("attributes_graffitiStatus", "Status", _weighted(_STATUS_WEIGHTS)),
        ("attributes_graffitiSurface", "Surface", _pick(*_SURFACES)),
        ("attributes_graffitiOffensive", "Offensive?", _weighted({"Yes": 1, "No": 5})),
        ("attributes_graffitiReportedDate", "Reported Date", _date_2023),
        ("attributes_graffitiDescription", "Description", _pick(*_GRAFFITI_DESCRIPTIONS)),
    ], LinkAttribute("attributes_graffitiStreet", "Street", street.code))
    gully = _design("designs_gullyInspection", "Gully Inspection", [
        (title, "Title", _reference("GI")),
        ("attributes_gullyInspectionDate", "Inspection Date", _date_2023),
        ("attributes_gullyStreet", "Street", _pick(*_STREET_NAMES)),
        ("attributes_gullyCondition", "Condition", _weighted(_CONDITION_WEIGHTS)),
        ("attributes_gullySiltDepth", "Depth (mm)", _maybe(_depth_mm, 8)),
        ("attributes_gullyCleansed", "Cleansed?", _pick("Yes", "No")),
        # Two attributes share the display name "Notes": Name-header exports repeat the header.
        ("attributes_gullyInspectorNotes", "Notes", _pick(*_GULLY_INSPECTOR_NOTES)),
        ("attributes_gullyCrewNotes", "Notes", _pick(*_GULLY_CREW_NOTES)),
    ])
    # fmt: on
    return street, container, job, graffiti, gully


_DEMO_SIZES = {
    "designs_street": 60,
    "designs_wasteContainer": 120,
    "designs_wasteContainerJob": 200,
    "designs_graffitiReport": 150,
    "designs_gullyInspection": 100,
}


def demo_dataset(seed: int = 7) -> Dataset:
    """The demo council: waste container jobs → containers, graffiti reports → streets, and
    gully inspections, with every item last edited in 2023. Same seed, same data."""
    rng = random.Random(seed)
    tables: dict[str, ItemTable] = {}
    for design in _demo_designs():
        table = ItemTable(design, rng)
        for _ in range(_DEMO_SIZES[design.code]):
            values = tuple(attribute.sample(rng) for attribute in design.attributes)
            links = tuple(tuple(tables[link.target].sample_ids(rng, link_count(rng))) for link in design.links)
            table.append(values, links, _moment_in_2023(rng))
        tables[design.code] = table
    return Dataset(tables.values(), seed=seed)


SYNTHETIC_ROOT = "designs_syntheticRecord"
_SYNTHETIC_FIELDS = 12
_SYNTHETIC_WORDS = tuple(
    "amber basin cedar delta ember fjord grove harbour inlet juniper kestrel larch meadow nettle "
    "orchard pebble quarry rowan spinney thistle upland verge willow yarrow zephyr".split()
)
# Prime pool sizes: stepping through a pool by any stride visits every value, and columns with
# different sizes don't repeat together, so rows stay varied (and compress realistically).
_POOL_SIZES = (997, 991, 983, 977, 971, 967, 953, 947, 941, 937, 929, 919)


def _value_pool(rng: random.Random, size: int) -> tuple[str | None, ...]:
    """Values for one synthetic attribute: words and numbers, a few empty, a few needing quotes."""

    def one() -> str | None:
        roll = rng.randrange(40)
        if roll == 0:
            return None
        words = " ".join(rng.choice(_SYNTHETIC_WORDS) for _ in range(rng.randrange(1, 4)))
        if roll == 1:
            return f'{words}, "{rng.choice(_SYNTHETIC_WORDS)}"'
        return f"{words} {rng.randrange(10**4)}"

    return tuple(one() for _ in range(size))


def _synthetic_codes(design_code: str, n_attributes: int) -> list[str]:
    """Attribute codes of a synthetic design: the title, then numbered fields."""
    stem = design_code.removeprefix("designs_synthetic").lower()
    return ["attributes_itemsTitle", *(f"attributes_{stem}Field{n:02d}" for n in range(1, n_attributes))]


def _generated_table(
    code: str,
    name: str,
    n_attributes: int,
    count: int,
    rng: random.Random,
    links: tuple[LinkAttribute, ...] = (),
    link_for: Callable[[int, int], tuple[str, ...]] | None = None,
) -> ItemTable:
    """A table of `count` items computed from their index: value pools stepped through by
    per-attribute strides, and `link_for(link position, index)` for the links."""
    pools = [_value_pool(rng, _POOL_SIZES[n % len(_POOL_SIZES)]) for n in range(n_attributes)]
    codes = _synthetic_codes(code, n_attributes)
    attributes = tuple(
        Attribute(attribute_code, f"Field {n:02d}" if n else "Title", _pick(*pool))
        for n, (attribute_code, pool) in enumerate(zip(codes, pools, strict=True))
    )
    columns = [(pool, len(pool), rng.randrange(1, len(pool)), rng.randrange(len(pool))) for pool in pools]
    edited_offset = rng.randrange(SECONDS_PER_YEAR)
    link_positions = range(len(links))
    if links and link_for is None:
        raise ValueError("a design with links needs link_for")

    def make(index: int, item_id: str) -> Item:
        values = tuple(pool[(index * step + offset) % size] for pool, size, step, offset in columns)
        edited = _YEAR_2023 + timedelta(seconds=(index * 7919 + edited_offset) % SECONDS_PER_YEAR)
        item_links = tuple(link_for(position, index) for position in link_positions) if link_for else ()
        return Item(item_id, edited, values, item_links)

    return ItemTable(Design(code, name, attributes, links), rng, count, make)


def synthetic_dataset(n_items: int, seed: int = 1) -> Dataset:
    """`n_items` synthetic records with 12 string attributes, each linked to one site and (mostly)
    one owner, with `n_items // 10` sites and owners. Items are computed on demand, so a
    million-record dataset costs a few megabytes until it is mutated."""
    if n_items < 1:
        raise ValueError("n_items must be at least 1")
    rng = random.Random(seed)
    n_linked = max(1, n_items // 10)
    site = _generated_table("designs_syntheticSite", "Synthetic Site", 3, n_linked, rng)
    owner = _generated_table("designs_syntheticOwner", "Synthetic Owner", 3, n_linked, rng)
    links = (
        LinkAttribute("attributes_recordSite", "Site", site.design.code),
        LinkAttribute("attributes_recordOwner", "Owner", owner.design.code),
    )

    def link_for(position: int, index: int) -> tuple[str, ...]:
        if position == 0:
            return (site.id_for(index * 40503 % n_linked),)
        return () if index % 11 == 0 else (owner.id_for((index * 69069 + 1) % n_linked),)

    root = _generated_table(SYNTHETIC_ROOT, "Synthetic Record", _SYNTHETIC_FIELDS, n_items, rng, links, link_for)
    return Dataset((site, owner, root), seed=seed)


def synthetic_request(
    file_name: str = "Synthetic Records.csv", *, export_header_type: Literal["Name", "Code"] = "Name"
) -> dict[str, Any]:
    """The export request matching `synthetic_dataset`: every root attribute, and a join to each
    linked design with two of its attributes."""
    joins = [
        f"root.attributes_recordSite.designs_syntheticSite.{code}"
        for code in ("attributes_itemsTitle", "attributes_siteField01")
    ] + [
        f"root.attributes_recordOwner.designs_syntheticOwner.{code}"
        for code in ("attributes_itemsTitle", "attributes_ownerField02")
    ]
    return {
        "aqs": {
            "type": "Join",
            "properties": {
                "dodiCode": SYNTHETIC_ROOT,
                "collectionCode": ["Live"],
                "attributes": _synthetic_codes(SYNTHETIC_ROOT, _SYNTHETIC_FIELDS),
                "joinAttributes": joins,
            },
            "children": [],
        },
        "fileName": file_name,
        "exportHeaderType": export_header_type,
        "discriminator": "CsvExportWebRequestModel",
        "parameterValues": [],
    }
