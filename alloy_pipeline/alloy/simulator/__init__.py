"""A local Alloy API: the four export endpoints over real HTTP on loopback, for the demo and tests.

Why a simulator rather than mocks: the hard parts of the pipeline are HTTP behaviour (polling,
429s, 5xx, dropped connections, streamed downloads) and the exact shape of Alloy's CSV export
(join files, duplicate headers, quoted newlines). Both are only tested honestly against a server
that speaks HTTP and writes real zips. The data is derived from a seed, so tests can assert exact
rows, and it can be mutated (edit, insert, delete, relink) so incremental runs have work to do.

    with AlloySimulator(dataset=demo_dataset(), api_key="demo-key") as sim:
        sim.url  # "http://127.0.0.1:<port>"

`dataset` holds the data model and its mutations, `datasets` the demo and synthetic data,
`export` request validation and zip writing, `server` the HTTP side.
"""

from alloy_pipeline.alloy.simulator.dataset import Attribute, Changes, Dataset, Design, Item, LinkAttribute
from alloy_pipeline.alloy.simulator.datasets import (
    SYNTHETIC_ROOT,
    demo_dataset,
    synthetic_dataset,
    synthetic_request,
)
from alloy_pipeline.alloy.simulator.export import BadRequestError
from alloy_pipeline.alloy.simulator.server import AlloySimulator, Fault, RecordedRequest, main

__all__ = [
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
    "demo_dataset",
    "main",
    "synthetic_dataset",
    "synthetic_request",
]
