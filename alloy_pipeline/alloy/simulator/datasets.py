"""The datasets the simulator serves: a small demo council, and a big cheap synthetic one.

Both are derived from a seed, so the same seed gives the same items and tests can assert exact
rows. The synthetic dataset computes its items on demand, for million-row benchmarks. Designs for
AQS files the demo does not know are synthesized from the files alone (`synthesis`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from datetime import timedelta
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
from alloy_pipeline.alloy.simulator.samplers import (
    STREET_NAMES,
    TOWNS,
    YEAR_2023,
    date_2023,
    digits,
    location,
    maybe,
    moment_in_2023,
    pick,
    postcode,
    reference,
    weighted,
)

# fmt: off
_STATUS_WEIGHTS = MappingProxyType({"Open": 35, "In Progress": 20, "Closed": 45})
_ROAD_CLASS_WEIGHTS = MappingProxyType({"A Road": 2, "B Road": 3, "Unclassified": 10})
_CONTAINER_TYPE_WEIGHTS = MappingProxyType(
    {"240L Wheelie Bin": 10, "1100L Eurobin": 3, "660L Eurobin": 2, "Recycling Box": 4, "Food Caddy": 4}
)
_PRIORITY_WEIGHTS = MappingProxyType({"Low": 4, "Medium": 6, "High": 3, "Urgent": 1})
_CONDITION_WEIGHTS = MappingProxyType({"Good": 5, "Fair": 4, "Poor": 2, "Blocked": 1})
_PROPERTY_TYPE_WEIGHTS = MappingProxyType({"House": 6, "Flat": 5, "Shop": 2, "Office": 1})
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
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


def _serial_number(rng: random.Random) -> str:
    return f"SN{rng.getrandbits(32):08X}"


def _depth_mm(rng: random.Random) -> str:
    return str(rng.randrange(0, 300, 5))


def _premises_address(rng: random.Random) -> str:
    return f"{rng.randrange(1, 160)} {rng.choice(STREET_NAMES)}"


def _premises_locality(rng: random.Random) -> str:
    return f"{rng.choice(TOWNS)} {postcode(rng)}"


def _design(code: str, name: str, attributes: Iterable[tuple[str, str, Sampler]], *links: LinkAttribute) -> Design:
    return Design(code, name, tuple(Attribute(*attribute) for attribute in attributes), links)


def _link(code: str, name: str, target: Design) -> LinkAttribute:
    return LinkAttribute(code, name, (target.code,))


def _demo_designs() -> tuple[Design, ...]:
    """The designs of the demo council, each after the designs it links to, so links can be
    sampled from items that exist."""
    title, subtitle = "attributes_itemsTitle", "attributes_itemsSubtitle"
    # fmt: off
    street = _design("designs_street", "Street", [
        (title, "Title", pick(*STREET_NAMES)),
        ("attributes_streetUsrn", "USRN", digits(8)),
        ("attributes_streetTown", "Town", pick(*TOWNS)),
        ("attributes_streetRoadClass", "Road Class", weighted(_ROAD_CLASS_WEIGHTS)),
    ])
    container = _design("designs_wasteContainer", "Waste Container", [
        (title, "Title", reference("WC")),
        ("attributes_wasteContainerType", "Container Type", weighted(_CONTAINER_TYPE_WEIGHTS)),
        ("attributes_wasteContainerSerialNumber", "Serial Number", _serial_number),
        ("attributes_wasteContainerLocation", "Location", location),
        ("attributes_wasteContainerInstalledDate", "Installed Date", maybe(date_2023, 5)),
    ])
    job = _design("designs_wasteContainerJob", "Waste Container Job", [
        (title, "Title", reference("WCJ")),
        ("attributes_jobStatus", "Status", weighted(_STATUS_WEIGHTS)),
        ("attributes_jobType", "Job Type", pick(*_JOB_TYPES)),
        ("attributes_jobPriority", "Priority", weighted(_PRIORITY_WEIGHTS)),
        ("attributes_jobRaisedDate", "Raised Date", date_2023),
        ("attributes_jobNotes", "Notes", pick(*_JOB_NOTES)),
    ], _link("attributes_jobAssignedContainer", "Assigned Container", container))
    graffiti = _design("designs_graffitiReport", "Graffiti Report", [
        (title, "Title", reference("GR")),
        ("attributes_graffitiStatus", "Status", weighted(_STATUS_WEIGHTS)),
        ("attributes_graffitiSurface", "Surface", pick(*_SURFACES)),
        ("attributes_graffitiOffensive", "Offensive?", weighted({"Yes": 1, "No": 5})),
        ("attributes_graffitiReportedDate", "Reported Date", date_2023),
        ("attributes_graffitiDescription", "Description", pick(*_GRAFFITI_DESCRIPTIONS)),
    ], _link("attributes_graffitiStreet", "Street", street))
    gully = _design("designs_gullyInspection", "Gully Inspection", [
        (title, "Title", reference("GI")),
        ("attributes_gullyInspectionDate", "Inspection Date", date_2023),
        ("attributes_gullyStreet", "Street", pick(*STREET_NAMES)),
        ("attributes_gullyCondition", "Condition", weighted(_CONDITION_WEIGHTS)),
        ("attributes_gullySiltDepth", "Depth (mm)", maybe(_depth_mm, 8)),
        ("attributes_gullyCleansed", "Cleansed?", pick("Yes", "No")),
        # Two attributes share the display name "Notes": Name-header exports repeat the header.
        ("attributes_gullyInspectorNotes", "Notes", pick(*_GULLY_INSPECTOR_NOTES)),
        ("attributes_gullyCrewNotes", "Notes", pick(*_GULLY_CREW_NOTES)),
    ])
    # Premises point at the jobs done there, and rounds at the premises they collect from: the
    # links a job export follows backwards (reverse joins), as Alloy's assets point at tasks.
    premises = _design("designs_premises", "Premises", [
        (title, "Title", _premises_address),
        (subtitle, "Subtitle", _premises_locality),
        ("attributes_premisesUprn", "UPRN", digits(12)),
        ("attributes_premisesPropertyType", "Property Type", weighted(_PROPERTY_TYPE_WEIGHTS)),
    ], _link("attributes_premisesContainerJobs", "Container Jobs", job),
       _link("attributes_premisesStreet", "Street", street))
    collection_round = _design("designs_collectionRound", "Collection Round", [
        (title, "Title", reference("RND")),
        ("attributes_collectionRoundDay", "Collection Day", pick(*_WEEKDAYS)),
        ("attributes_collectionRoundCrew", "Crew", pick("Crew A", "Crew B", "Crew C")),
    ], _link("attributes_collectionRoundPremises", "Premises", premises))
    # fmt: on
    return street, container, job, graffiti, gully, premises, collection_round


_DEMO_SIZES = MappingProxyType(
    {
        "designs_street": 60,
        "designs_wasteContainer": 120,
        "designs_wasteContainerJob": 200,
        "designs_graffitiReport": 150,
        "designs_gullyInspection": 100,
        "designs_premises": 150,
        "designs_collectionRound": 12,
    }
)
DEMO_ROOTS = ("designs_wasteContainerJob", "designs_graffitiReport", "designs_gullyInspection")
"""The designs the example queries in aqs_queries/ export."""
_PREMISES_PER_ROUND = 10


def demo_dataset(seed: int = 7) -> Dataset:
    """The demo council: waste container jobs → containers, with the premises that point at a
    job and the collection rounds that point at those premises; graffiti reports → streets; and
    gully inspections. Every item was last edited in 2023. Same seed, same data."""
    rng = random.Random(seed)
    tables: dict[str, ItemTable] = {}
    for design in _demo_designs():
        table = ItemTable(design, rng)
        for number in range(_DEMO_SIZES[design.code]):
            values = tuple(attribute.sample(rng) for attribute in design.attributes)
            links = tuple(_demo_link(tables, link, number, rng) for link in design.links)
            table.append(values, links, moment_in_2023(rng))
        tables[design.code] = table
    return Dataset(tables.values(), seed=seed, roots=DEMO_ROOTS)


def _demo_link(tables: dict[str, ItemTable], link: LinkAttribute, number: int, rng: random.Random) -> tuple[str, ...]:
    """The items the `number`th new item links to: mostly one; a round, a run of premises."""
    [target] = link.targets
    if link.code != "attributes_collectionRoundPremises":
        return tuple(tables[target].sample_ids(rng, link_count(rng)))
    first = number * _PREMISES_PER_ROUND
    return tuple(tables[target].id_for(index) for index in range(first, first + _PREMISES_PER_ROUND))


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
        Attribute(attribute_code, f"Field {n:02d}" if n else "Title", pick(*pool))
        for n, (attribute_code, pool) in enumerate(zip(codes, pools, strict=True))
    )
    columns = [(pool, len(pool), rng.randrange(1, len(pool)), rng.randrange(len(pool))) for pool in pools]
    edited_offset = rng.randrange(SECONDS_PER_YEAR)
    link_positions = range(len(links))
    if links and link_for is None:
        raise ValueError("a design with links needs link_for")

    def make(index: int, item_id: str) -> Item:
        values = tuple(pool[(index * step + offset) % size] for pool, size, step, offset in columns)
        edited = YEAR_2023 + timedelta(seconds=(index * 7919 + edited_offset) % SECONDS_PER_YEAR)
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
        _link("attributes_recordSite", "Site", site.design),
        _link("attributes_recordOwner", "Owner", owner.design),
    )

    def link_for(position: int, index: int) -> tuple[str, ...]:
        if position == 0:
            return (site.id_for(index * 40503 % n_linked),)
        return () if index % 11 == 0 else (owner.id_for((index * 69069 + 1) % n_linked),)

    root = _generated_table(SYNTHETIC_ROOT, "Synthetic Record", _SYNTHETIC_FIELDS, n_items, rng, links, link_for)
    return Dataset((site, owner, root), seed=seed, roots=[SYNTHETIC_ROOT])


def synthetic_request(
    file_name: str = "Synthetic Records.csv", *, export_header_type: Literal["Name", "Code"] = "Name"
) -> dict[str, Any]:
    """The export request matching `synthetic_dataset`: every root attribute, and a forward join
    to each linked design reading two of its attributes."""
    joins = [f"root.attributes_recordSite.{code}" for code in ("attributes_itemsTitle", "attributes_siteField01")] + [
        f"root.attributes_recordOwner.{code}" for code in ("attributes_itemsTitle", "attributes_ownerField02")
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
