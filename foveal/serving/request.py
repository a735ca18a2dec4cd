"""An Inspect request → what the reasoning loop runs: the inspection (frames, prompt, taxonomy)
and the loop options (operations allowed, their limit). Product codes select a catalog entry:
its taxonomy (requested defect types must belong to it) and what the prompt calls the part. A
code in no entry is inspected with the generic prompt, or refused where the service is set to
refuse it. Refusals are `InvalidInput`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from foveal.domain import NO_DEFECT, Taxonomy
from foveal.operations import RGBImage
from foveal.plant.surfaces import PRODUCTS
from foveal.reasoning.loop import Inspection, LoopOptions
from foveal.reasoning.prompts import inspection_prompt
from foveal.serving.images import InvalidInput
from foveal.settings import Settings
from foveal.v1 import inspection_pb2


@dataclass(frozen=True)
class Product:
    """A catalog entry: the types the product is inspected for, and what the prompt calls it
    (a surface the model was trained on; None: the generic prompt)."""

    taxonomy: Taxonomy = field(default_factory=Taxonomy)
    surface: str | None = None


GENERIC = Product()  # a product code the catalog does not know


def default_catalog() -> dict[str, Product]:
    """Every product the model was trained on, each named as itself, with the full default taxonomy."""
    return {name: Product(Taxonomy(), name) for name in PRODUCTS}


def catalog_from(settings: Settings) -> dict[str, Product]:
    """The default catalog plus the settings' `products` (which may redefine a default entry)."""
    catalog = default_catalog()
    for code, entry in settings.products.items():
        own = tuple(dict.fromkeys(t for t in entry.defect_types or () if t != NO_DEFECT))
        catalog[code] = Product(Taxonomy((NO_DEFECT, *own)) if own else Taxonomy(), entry.surface)
    return catalog


def product_for(product: str, defect_types: list[str], catalog: Mapping[str, Product],
                refuse_unknown: bool = False) -> Product:
    """The request's catalog entry, its taxonomy cut down to `defect_types` when given. No product
    named, or one the catalog does not know (unless `refuse_unknown`): the generic entry."""
    if product and product not in catalog and refuse_unknown:
        raise InvalidInput(f"unknown product {product[:64]!r}; known: {', '.join(sorted(catalog))}")
    entry = catalog.get(product, GENERIC) if product else GENERIC
    if not defect_types:
        return entry
    unknown = sorted({t[:64] for t in defect_types} - set(entry.taxonomy.names))
    if unknown:
        raise InvalidInput(f"defect types {unknown} are not in the taxonomy of "
                           f"{product or 'the default product'}: {list(entry.taxonomy.names)}")
    return dataclasses.replace(entry, taxonomy=entry.taxonomy.restrict(defect_types))


def inspection_for(request: inspection_pb2.InspectRequest, frames: list[RGBImage],
                   catalog: Mapping[str, Product], refuse_unknown: bool = False) -> Inspection:
    entry = product_for(request.product, list(request.defect_types), catalog, refuse_unknown)
    return Inspection(frames, prompt_for(entry, len(frames)), entry.taxonomy.names, item_id=request.frame_id)


def prompt_for(entry: Product, frames: int = 1) -> str:
    """The inspection prompt of a catalog entry. The generic prompt, as the model was trained on
    it, names no types; they are listed when the prompt names the surface or the line narrows
    or extends the default ones.

    >>> prompt_for(GENERIC)
    'Inspect this part. Which defect does it show? Answer none if it has none.'
    """
    listed = entry.surface is not None or entry.taxonomy != Taxonomy()
    return inspection_prompt(entry.surface, entry.taxonomy.names if listed else None, frames)


def loop_options(options: inspection_pb2.InspectOptions, base: LoopOptions) -> LoopOptions:
    """The server's loop options narrowed by the request's: operations off, or fewer of them."""
    limit = base.max_operations
    if options.max_operations:
        limit = min(limit, options.max_operations)
    allow = base.allow_operations and not options.disable_operations
    return dataclasses.replace(base, allow_operations=allow, max_operations=limit)
