"""A local Alloy API: the four export endpoints over real HTTP on loopback, for the demo and tests.

Why a simulator rather than mocks: the hard parts of the pipeline are HTTP behaviour (polling,
429s, 5xx, dropped connections, streamed downloads) and the exact shape of Alloy's CSV export
(join files, predecessor columns, duplicate headers, quoted newlines). Both are only tested
honestly against a server that speaks HTTP and writes real zips. It reads AQS as Alloy does:
forward, reverse and chained join paths, list-valued filters, `sortInfo`, and the fields it does
not use ignored. The data is derived from a seed, so tests can assert exact rows, and it can be
mutated (edit, insert, delete, relink) so incremental runs have work to do.

    with AlloySimulator(dataset=demo_dataset(), api_key="demo-key") as sim:
        sim.url  # "http://127.0.0.1:<port>"

`dataset` holds the data model and its mutations; `datasets` the demo and synthetic data;
`synthesis` designs made up from a council's AQS files alone; `samplers` realistic values;
`request` the export body; `paths` AQS path syntax; `joins` paths resolved and walked; `filters`
AQS filter trees; `export` planning an export and writing its zip; `server` the HTTP side.
"""

from alloy_pipeline.alloy.simulator.dataset import Attribute, Changes, Dataset, Design, Item, LinkAttribute
from alloy_pipeline.alloy.simulator.datasets import (
    DEMO_ROOTS,
    SYNTHETIC_ROOT,
    demo_dataset,
    synthetic_dataset,
    synthetic_request,
)
from alloy_pipeline.alloy.simulator.request import BadRequestError
from alloy_pipeline.alloy.simulator.server import AlloySimulator, Fault, RecordedRequest, main
from alloy_pipeline.alloy.simulator.synthesis import dataset_for_queries

__all__ = [
    "DEMO_ROOTS",
    "SYNTHETIC_ROOT",
    "AlloySimulator",
    "Attribute",
    "BadRequestError",
    "Changes",
    "Dataset",
    "Design",
    "Fault",
    "Item",
    "LinkAttribute",
    "RecordedRequest",
    "dataset_for_queries",
    "demo_dataset",
    "main",
    "synthetic_dataset",
    "synthetic_request",
]
