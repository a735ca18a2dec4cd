"""An Inspect request → what the reasoning loop runs: the inspection (frames, prompt, taxonomy)
and the loop options (operations allowed, their limit). Product codes select a taxonomy from the
service's catalog; requested defect types must belong to it. Refusals are `InvalidInput`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from foveal.domain import Taxonomy
from foveal.operations import RGBImage
from foveal.plant.surfaces import PRODUCTS
from foveal.reasoning.loop import Inspection, LoopOptions
from foveal.reasoning.prompts import inspection_prompt
from foveal.serving.images import InvalidInput
from foveal.v1 import inspection_pb2


def default_catalog() -> dict[str, Taxonomy]:
    """Every product the plant renderer knows, each with the full default taxonomy."""
    return {name: Taxonomy() for name in PRODUCTS}


def taxonomy_for(product: str, defect_types: list[str], catalog: Mapping[str, Taxonomy]) -> Taxonomy:
    """The request's taxonomy: the product's (the default one when no product is named), cut
    down to `defect_types` when given."""
    if product and product not in catalog:
        raise InvalidInput(f"unknown product {product[:64]!r}; known: {', '.join(sorted(catalog))}")
    taxonomy = catalog[product] if product else Taxonomy()
    if not defect_types:
        return taxonomy
    unknown = sorted({t[:64] for t in defect_types} - set(taxonomy.names))
    if unknown:
        raise InvalidInput(f"defect types {unknown} are not in the taxonomy of "
                           f"{product or 'the default product'}: {list(taxonomy.names)}")
    return taxonomy.restrict(defect_types)


def inspection_for(request: inspection_pb2.InspectRequest, frames: list[RGBImage],
                   catalog: Mapping[str, Taxonomy]) -> Inspection:
    taxonomy = taxonomy_for(request.product, list(request.defect_types), catalog)
    prompt = inspection_prompt(request.product or None, taxonomy.names, len(frames))
    return Inspection(frames, prompt, taxonomy.names, item_id=request.frame_id)


def loop_options(options: inspection_pb2.InspectOptions, base: LoopOptions) -> LoopOptions:
    """The server's loop options narrowed by the request's: operations off, or fewer of them."""
    limit = base.max_operations
    if options.max_operations:
        limit = min(limit, options.max_operations)
    allow = base.allow_operations and not options.disable_operations
    return dataclasses.replace(base, allow_operations=allow, max_operations=limit)
