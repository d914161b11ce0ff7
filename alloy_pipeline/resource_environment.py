"""The environment variables behind resource fields, and the check that a run's resources still hold them.

Dagster replaces the whole configuration of a resource that a run's config names: resources cannot
be configured partly in code and partly at launch (Dagster issue 12898). Run config that sets only
`cleanup_grace_minutes` on `lake` therefore runs with every other field at its default, a local
`data/raw-zone` in place of the bucket ALLOY_RAW_ZONE names, and the run would succeed, writing
the day where no reader looks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg


class EnvironmentNotHeld(ValueError):
    """A resource of a run holds defaults where the code location's environment sets its fields."""


def held_environment(resource: dg.ConfigurableResource, variables: Mapping[str, str]) -> None:
    """Raise `EnvironmentNotHeld` when a field whose variable (`variables`: field to variable) the
    environment sets holds the field's default instead: the mark of run config that named the
    resource but not that field. A field set to anything else, in code or run config, is taken as
    meant. Values stay out of the message: SPARK_REMOTE carries the engine's token."""
    fields = type(resource).model_fields
    lost = [
        f"{field} ({variable})"
        for field, variable in variables.items()
        if variable in os.environ
        and getattr(resource, field) == fields[field].default
        and str(getattr(resource, field)) != os.environ[variable]
    ]
    if lost:
        raise EnvironmentNotHeld(
            f"{type(resource).__name__}: {', '.join(lost)} hold their defaults, not what the environment sets. "
            "This run's config names the resource, and Dagster then replaces all of its configuration "
            "(Dagster issue 12898): give those fields in the run config too, or leave the resource out of it. "
            "Nothing was read or written."
        )
