"""The paper's LIBERO-OOD suites as data (spec §7.2–7.4).

Each task is written as a LIBERO base scene plus explicit edits, so the difference between an OOD task and the
LIBERO scene it was copied from is readable here. `textlatent.libero.bddl.to_bddl` turns a task into BDDL text;
the tests check that it describes the same task as the reference files of the paper's modified LIBERO.

Ranges are (x_min, y_min, x_max, y_max) in the frame of the region's target (table or floor), written as the
short decimals they stand for; the reference files carry float noise such as 0.060000000000000005 (LIBERO
computed them as centre ± half size), which is below 1e-9 and therefore only formatting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

Range = tuple[float, float, float, float]

TABLETOP_PROBLEM = "LIBERO_Tabletop_Manipulation"  # scene class for LIBERO-Goal / LIBERO-Spatial
FLOOR_PROBLEM = "LIBERO_Floor_Manipulation"  # scene class for LIBERO-Object

GOAL_OOD = "libero_goal_ood"
SPATIAL_OOD = "libero_spatial_ood"
OBJECT_OOD = "libero_object_ood"
SUITE_NAMES: tuple[str, ...] = (GOAL_OOD, SPATIAL_OOD, OBJECT_OOD)


@dataclass(frozen=True)
class Region:
    """A BDDL region: a placement area on a target (`ranges`) or a named site of a fixture/object (no ranges)."""

    name: str
    target: str
    ranges: tuple[Range, ...] = ()
    yaw_rotation: tuple[float, float] | None = None

    @property
    def full_name(self) -> str:
        # LIBERO keys regions by "<target>_<name>"; that is also how :init and :goal refer to them.
        return f"{self.target}_{self.name}"


def table_region(
    name: str, ranges: Range, yaw_rotation: tuple[float, float] | None = None, target: str = "main_table"
) -> Region:
    return Region(name=name, target=target, ranges=(ranges,), yaw_rotation=yaw_rotation)


def floor_region(name: str, ranges: Range) -> Region:
    return Region(name=name, target="floor", ranges=(ranges,))


def site(target: str, name: str) -> Region:
    """A sub-region whose geometry comes from the target's asset (e.g. a cabinet's top_side)."""
    return Region(name=name, target=target)


@dataclass(frozen=True)
class Relation:
    """A ground predicate such as (On cream_cheese_1 basket_1)."""

    predicate: str
    args: tuple[str, ...]

    def as_tuple(self) -> tuple[str, ...]:
        return (self.predicate, *self.args)

    def __str__(self) -> str:
        return f"({self.predicate} {' '.join(self.args)})"


def on(thing: str, support: str) -> Relation:
    return Relation("On", (thing, support))


def inside(thing: str, container_region: str) -> Relation:
    return Relation("In", (thing, container_region))


@dataclass(frozen=True)
class Scene:
    """Everything of a BDDL problem except language, goal and objects of interest.

    `fixtures` and `objects` are ordered (name, type) pairs; the type is the LIBERO asset category, which the OOD
    files often change while keeping the variable name (e.g. `cream_cheese_1 - wine_bottle`).
    """

    problem_name: str
    fixtures: tuple[tuple[str, str], ...]
    objects: tuple[tuple[str, str], ...]
    regions: tuple[Region, ...]
    init: tuple[Relation, ...]

    # ---- edits; each returns a new Scene so base scenes stay shared and unchanged ----

    def with_region(self, region: Region, *, first: bool = False) -> Scene:
        """Replace the region with the same full name in place, or add it (at the front if `first`)."""
        names = [r.full_name for r in self.regions]
        if region.full_name in names:
            regions = tuple(region if r.full_name == region.full_name else r for r in self.regions)
        elif first:
            regions = (region, *self.regions)
        else:
            regions = (*self.regions, region)
        return replace(self, regions=regions)

    def with_region_ranges(self, full_name: str, ranges: Range) -> Scene:
        return self.with_region(replace(self.region(full_name), ranges=(ranges,)))

    def with_region_renamed(self, full_name: str, new_name: str) -> Scene:
        """Same area under a new name (the OOD files rename e.g. cream_cheese_region to bbq_sauce_region)."""
        old = self.region(full_name)
        renamed = replace(old, name=new_name)
        return replace(self, regions=tuple(renamed if r is old else r for r in self.regions))

    def without_regions(self, *full_names: str) -> Scene:
        self._require(full_names, [r.full_name for r in self.regions], "region")
        return replace(self, regions=tuple(r for r in self.regions if r.full_name not in full_names))

    def with_object(self, name: str, type_: str, *, first: bool = False) -> Scene:
        return replace(self, objects=_with_entry(self.objects, name, type_, first))

    def without_object(self, name: str) -> Scene:
        """Remove an object and its initial placement."""
        self._require([name], [n for n, _ in self.objects], "object")
        return replace(self, objects=tuple(e for e in self.objects if e[0] != name)).unplaced(name)

    def with_fixture(self, name: str, type_: str) -> Scene:
        return replace(self, fixtures=_with_entry(self.fixtures, name, type_, False))

    def without_fixture(self, name: str) -> Scene:
        """Remove a fixture, its placement and its sites."""
        self._require([name], [n for n, _ in self.fixtures], "fixture")
        scene = replace(self, fixtures=tuple(e for e in self.fixtures if e[0] != name)).unplaced(name)
        return replace(scene, regions=tuple(r for r in scene.regions if r.target != name))

    def with_object_replaced(self, old: str, new: str, new_type: str, new_place: str) -> Scene:
        """Swap object variable `old` for `new - new_type` at the same list positions, placed at `new_place`."""
        self._require([old], [n for n, _ in self.objects], "object")
        objects = tuple((new, new_type) if n == old else (n, t) for n, t in self.objects)
        init = tuple(on(new, new_place) if r.args[0] == old else r for r in self.init)
        return replace(self, objects=objects, init=init)

    def placed(self, thing: str, where: str) -> Scene:
        """Set the initial placement On(thing, where), replacing an earlier placement of `thing` in place."""
        relation = on(thing, where)
        if any(r.args[0] == thing for r in self.init):
            return replace(self, init=tuple(relation if r.args[0] == thing else r for r in self.init))
        return replace(self, init=(*self.init, relation))

    def unplaced(self, thing: str) -> Scene:
        """Drop the initial placement of `thing` (it stays declared if it is an object)."""
        return replace(self, init=tuple(r for r in self.init if r.args[0] != thing))

    def region(self, full_name: str) -> Region:
        for r in self.regions:
            if r.full_name == full_name:
                return r
        raise KeyError(f"no region {full_name!r}")

    @staticmethod
    def _require(wanted: Iterable[str], present: list[str], kind: str) -> None:
        # Fail loudly: an edit that silently does nothing would hide a typo in a task definition.
        missing = [w for w in wanted if w not in present]
        if missing:
            raise KeyError(f"no {kind} {missing}")


def _with_entry(
    entries: tuple[tuple[str, str], ...], name: str, type_: str, first: bool
) -> tuple[tuple[str, str], ...]:
    if any(n == name for n, _ in entries):
        return tuple((n, type_ if n == name else t) for n, t in entries)
    return ((name, type_), *entries) if first else (*entries, (name, type_))


@dataclass(frozen=True)
class LiberoTask:
    """One task. `language` is the prompt the paper's runner sends (the file name with "_" → " ");
    `reference_language` keeps the reference file's own `(:language …)` text, which LIBERO never uses here."""

    suite: str
    language: str
    scene: Scene
    goal: tuple[Relation, ...]  # a conjunction
    obj_of_interest: tuple[str, ...]
    reference_language: str

    @property
    def name(self) -> str:
        return self.language.replace(" ", "_")

    @property
    def bddl_file_name(self) -> str:
        return f"{self.name}.bddl"

    @property
    def problem_name(self) -> str:
        return self.scene.problem_name

    @property
    def reference_language_disagrees(self) -> bool:
        """True where the reference's language field says something else than the prompt (not just case)."""
        return self.reference_language.lower() != self.language.lower()


# ---------------------------------------------------------------------------------------------------------------
# LIBERO-Goal kitchen (upstream libero_goal/*.bddl share this layout)

_CABINET_SITES = tuple(
    site("wooden_cabinet_1", n) for n in ("top_region", "middle_region", "bottom_region", "top_side")
)
CABINET_TOP = "wooden_cabinet_1_top_side"
STOVE_BASE = "flat_stove_1_base_region"  # site added by the paper's flat_stove.xml: the whole stove top (§7.5)

LIBERO_GOAL_KITCHEN = Scene(
    problem_name=TABLETOP_PROBLEM,
    fixtures=(
        ("main_table", "table"),
        ("wooden_cabinet_1", "wooden_cabinet"),
        ("flat_stove_1", "flat_stove"),
        ("wine_rack_1", "wine_rack"),
    ),
    objects=(
        ("akita_black_bowl_1", "akita_black_bowl"),
        ("cream_cheese_1", "cream_cheese"),
        ("wine_bottle_1", "wine_bottle"),
        ("plate_1", "plate"),
    ),
    regions=(
        table_region("plate_region", (0.04, -0.03, 0.06, -0.01)),
        table_region("akita_black_bowl_region", (-0.10, -0.01, -0.08, 0.01)),
        table_region("wine_bottle_region", (-0.21, -0.06, -0.19, -0.04)),
        table_region("cream_cheese_region", (-0.06, 0.12, -0.04, 0.14)),
        table_region("stove_front_region", (-0.09, 0.17, -0.01, 0.25)),
        table_region("cabinet_region", (0.02, -0.25, 0.04, -0.23), yaw_rotation=(math.pi, math.pi)),
        table_region("stove_region", (-0.42, 0.20, -0.40, 0.22)),
        table_region("wine_rack_region", (-0.27, -0.27, -0.25, -0.25), yaw_rotation=(math.pi, math.pi)),
        *_CABINET_SITES,
        site("flat_stove_1", "cook_region"),
        # LIBERO-Goal declares sites of a bowl drainer that is not in the scene; kept because the files have them.
        site("bowl_drainer_1", "right_region"),
        site("bowl_drainer_1", "left_region"),
        site("wine_rack_1", "top_region"),
    ),
    init=(
        on("wine_bottle_1", "main_table_wine_bottle_region"),
        on("akita_black_bowl_1", "main_table_akita_black_bowl_region"),
        on("plate_1", "main_table_plate_region"),
        on("cream_cheese_1", "main_table_cream_cheese_region"),
        on("wooden_cabinet_1", "main_table_cabinet_region"),
        on("flat_stove_1", "main_table_stove_region"),
        on("wine_rack_1", "main_table_wine_rack_region"),
    ),
)


def _stove_sites_cook_to_base(scene: Scene) -> Scene:
    """OOD stove goals use the larger `base_region` site, which replaces the `cook_region` declaration."""
    return scene.with_region_renamed("flat_stove_1_cook_region", "base_region")


GOAL_OOD_KITCHEN = _stove_sites_cook_to_base(LIBERO_GOAL_KITCHEN)

# Where the paper spawns a bottle so that base task "wine bottle → cabinet" (task 14) picks it up there.
_GOAL_OOD_BOTTLE_SPOT: Range = (-0.195, 0.0, -0.19, 0.015)

_BASKET_KITCHEN = (
    GOAL_OOD_KITCHEN
    # The stove is gone: the cabinet variable now holds a flat stove at the cabinet spot ...
    .without_fixture("flat_stove_1")
    .with_fixture("wooden_cabinet_1", "flat_stove")
    .without_regions("main_table_stove_front_region")
    # ... and a basket stands near where the stove was.
    .with_region_ranges("main_table_stove_region", (-0.22, 0.20, -0.21, 0.21))
    .with_object("basket_1", "basket", first=True)
    .placed("basket_1", "main_table_stove_region")
)
_ORANGE_JUICE_KITCHEN = (
    GOAL_OOD_KITCHEN.with_region_renamed("main_table_wine_bottle_region", "orange_juice_region")
    .with_region_ranges("main_table_orange_juice_region", _GOAL_OOD_BOTTLE_SPOT)
    .with_object_replaced("wine_bottle_1", "orange_juice_1", "orange_juice", "main_table_orange_juice_region")
    .with_object("cream_cheese_1", "wine_bottle")  # a wine bottle stands at the cream-cheese spot
)


def _sauce_at_cream_cheese_spot(sauce: str, cream_cheese_moves_into: str) -> Scene:
    """A sauce takes the cream cheese's place; the cream cheese takes the place of `cream_cheese_moves_into`
    (whose variable is re-typed, so that object is gone)."""
    scene = GOAL_OOD_KITCHEN.with_region_renamed("main_table_cream_cheese_region", f"{sauce}_region")
    scene = scene.with_object(cream_cheese_moves_into, "cream_cheese")
    return scene.with_object_replaced("cream_cheese_1", f"{sauce}_1", sauce, f"main_table_{sauce}_region")


def _goal_task(language: str, scene: Scene, goal: Relation, reference_language: str) -> LiberoTask:
    # Every goal_ood file lists the moved object and its destination as objects of interest.
    return LiberoTask(GOAL_OOD, language, scene, (goal,), goal.args, reference_language)


LIBERO_GOAL_OOD: tuple[LiberoTask, ...] = (
    _goal_task(
        "put the cream cheese in the basket",
        _BASKET_KITCHEN,
        on("cream_cheese_1", "basket_1"),
        "Put the cream cheese in the basket",
    ),
    _goal_task(
        "put the orange juice on the stove",
        _ORANGE_JUICE_KITCHEN,
        on("orange_juice_1", STOVE_BASE),
        "Put the orange juice on the rack",
    ),
    _goal_task(
        "put the bbq source on the plate",  # sic: the paper's file name (and so its prompt) says "source"
        _sauce_at_cream_cheese_spot("bbq_sauce", cream_cheese_moves_into="akita_black_bowl_1"),
        on("bbq_sauce_1", "plate_1"),
        "Put the bbq sauce on the plate",
    ),
    _goal_task(
        "put the tomato sauce on top of the cabinet",
        _sauce_at_cream_cheese_spot("tomato_sauce", cream_cheese_moves_into="wine_bottle_1"),
        on("tomato_sauce_1", CABINET_TOP),
        "Put the tomato sauce on the top of the drawer",
    ),
    _goal_task(
        "put the wine bottle on the stove",
        GOAL_OOD_KITCHEN.with_region_ranges("main_table_wine_bottle_region", _GOAL_OOD_BOTTLE_SPOT),
        on("wine_bottle_1", STOVE_BASE),
        "Put the wine bottle on the stove",
    ),
    _goal_task(
        "put the wine bottle on the plate",
        GOAL_OOD_KITCHEN,
        on("wine_bottle_1", "plate_1"),
        "Put the wine bottle on the plate",
    ),
    _goal_task(
        "put the wine bottle in the bowl",
        GOAL_OOD_KITCHEN,
        on("wine_bottle_1", "akita_black_bowl_1"),
        "Put the wine bottle on the bowl",
    ),
    _goal_task(
        "put the cream cheese on the plate",
        GOAL_OOD_KITCHEN,
        on("cream_cheese_1", "plate_1"),
        "Put the cream cheese on the plate",
    ),
    _goal_task(
        "put the cream cheese on the stove",
        GOAL_OOD_KITCHEN,
        on("cream_cheese_1", STOVE_BASE),
        "Put the cream cheese on the stove",
    ),
    _goal_task(
        "put the cream cheese on top of the cabinet",
        GOAL_OOD_KITCHEN,
        on("cream_cheese_1", CABINET_TOP),
        "Put the cream cheese on the top of the drawer",
    ),
)


# ---------------------------------------------------------------------------------------------------------------
# LIBERO-Spatial table (upstream libero_spatial/*.bddl share this layout; only the bowls move between tasks)

LIBERO_SPATIAL_TABLE = Scene(
    problem_name=TABLETOP_PROBLEM,
    fixtures=(("main_table", "table"), ("wooden_cabinet_1", "wooden_cabinet"), ("flat_stove_1", "flat_stove")),
    objects=(
        ("akita_black_bowl_1", "akita_black_bowl"),
        ("akita_black_bowl_2", "akita_black_bowl"),
        ("cookies_1", "cookies"),
        ("glazed_rim_porcelain_ramekin_1", "glazed_rim_porcelain_ramekin"),
        ("plate_1", "plate"),
    ),
    regions=(
        table_region("plate_region", (0.05, 0.19, 0.07, 0.21)),
        table_region("next_to_plate_region", (0.0, 0.30, 0.02, 0.32)),
        table_region("box_region", (0.06, 0.02, 0.08, 0.04)),
        table_region("next_to_box_region", (0.12, -0.08, 0.14, -0.06)),
        table_region("between_plate_ramekin_region", (-0.06, 0.19, -0.04, 0.21)),
        table_region("ramekin_region", (-0.21, 0.19, -0.19, 0.21)),
        table_region("next_to_ramekin_region", (-0.19, 0.31, -0.17, 0.33)),
        table_region("table_center", (-0.10, -0.01, -0.05, 0.01)),
        table_region("table_front", (0.19, -0.01, 0.21, 0.01)),
        table_region(
            "cabinet_region", (0.02, -0.28, 0.04, -0.26), yaw_rotation=(2.6613777765410678, 2.7242096296128633)
        ),
        table_region("stove_region", (-0.42, -0.15, -0.40, -0.13)),
        *_CABINET_SITES,
        site("flat_stove_1", "cook_region"),
    ),
    init=(
        on("plate_1", "main_table_plate_region"),
        on("cookies_1", "main_table_box_region"),
        on("glazed_rim_porcelain_ramekin_1", "main_table_ramekin_region"),
        on("wooden_cabinet_1", "main_table_cabinet_region"),
        on("flat_stove_1", "main_table_stove_region"),
    ),
)

# Common to all spatial_ood files: the stove moves near the LIBERO-Goal stove spot (used by base task 17),
# the ramekin stays declared but is never placed, and stove goals use base_region.
SPATIAL_OOD_TABLE = (
    _stove_sites_cook_to_base(LIBERO_SPATIAL_TABLE)
    .with_region_ranges("main_table_stove_region", (-0.40, 0.27, -0.38, 0.29))
    .unplaced("glazed_rim_porcelain_ramekin_1")
)


def _bowls_at(target_bowl_on: str, other_bowl_on: str | None) -> Scene:
    """Place bowl 1 (the one the task moves) and bowl 2 (a distractor, or not placed at all)."""
    scene = SPATIAL_OOD_TABLE.placed("akita_black_bowl_1", target_bowl_on)
    if other_bowl_on is not None:
        scene = scene.placed("akita_black_bowl_2", other_bowl_on)
    # Bowls first in :init, as in LIBERO-Spatial (cosmetic).
    bowls = tuple(r for r in scene.init if r.args[0].startswith("akita_black_bowl"))
    return replace(scene, init=bowls + tuple(r for r in scene.init if r not in bowls))


# Layout of LIBERO-Spatial "pick up the black bowl next to the cookie box ...": the OOD pick-and-place tasks
# keep both bowls out of the way there and add one new object.
_NEXT_TO_BOX_LAYOUT = _bowls_at("main_table_next_to_box_region", STOVE_BASE)

# Pick spots copied from LIBERO-Goal, so that the Goal latent of the base task leads the arm there (spec §7.3).
_GOAL_CREAM_CHEESE_SPOT: Range = (-0.06, 0.12, -0.04, 0.14)
# The reference files write x_min as -0.19000000000000002: a region 2.8e-17 m wide in x, i.e. a line. The value is
# kept to the last bit: at exactly -0.19 the width is 0 and MuJoCo refuses the region's geom ("size 0 must be
# positive"), so the task could not be built at all.
_SPATIAL_OOD_BOTTLE_SPOT: Range = (-0.19000000000000002, 0.0, -0.19, 0.015)


def _new_object_on_table(variable: str, type_: str, spot: Range) -> Scene:
    """Add `variable - type_` (the variable name is reused for another type in two tasks) at `spot`."""
    region_name = variable.removesuffix("_1") + "_region"
    scene = _NEXT_TO_BOX_LAYOUT.with_region(table_region(region_name, spot), first=True)
    scene = scene.with_object(variable, type_, first=True)
    return replace(scene, init=(on(variable, f"main_table_{region_name}"), *scene.init))


def _spatial_task(language: str, scene: Scene, moved: str, destination: str, reference_language: str) -> LiberoTask:
    return LiberoTask(SPATIAL_OOD, language, scene, (on(moved, destination),), (moved, destination), reference_language)


LIBERO_SPATIAL_OOD: tuple[LiberoTask, ...] = (
    _spatial_task(
        "put the butter on the plate",
        _new_object_on_table("chocolate_pudding_1", "butter", _GOAL_CREAM_CHEESE_SPOT),
        "chocolate_pudding_1",
        "plate_1",
        "Put the bbq sauce on the plate",
    ),
    _spatial_task(
        "put the chocolate pudding on the plate",
        _new_object_on_table("chocolate_pudding_1", "chocolate_pudding", _GOAL_CREAM_CHEESE_SPOT),
        "chocolate_pudding_1",
        "plate_1",
        "Put the chocolate pudding on the plate",
    ),
    _spatial_task(
        "put the milk on the plate",
        _new_object_on_table("orange_juice_1", "milk", _SPATIAL_OOD_BOTTLE_SPOT),
        "orange_juice_1",
        "plate_1",
        "Put the orange juice on the plate",
    ),
    _spatial_task(
        "put the orange juice on the plate",
        _new_object_on_table("orange_juice_1", "orange_juice", _SPATIAL_OOD_BOTTLE_SPOT),
        "orange_juice_1",
        "plate_1",
        "Put the orange juice on the plate",
    ),
    _spatial_task(
        "put the bowl on cookie box on the stove",  # sic: no "the" before "cookie box" in the file name
        _bowls_at("cookies_1", CABINET_TOP),
        "akita_black_bowl_1",
        STOVE_BASE,
        "Put the bowl on the cookie box on the stove",
    ),
    _spatial_task(
        "put the bowl on cookie box on the cabinet",
        _bowls_at("cookies_1", None),
        "akita_black_bowl_1",
        CABINET_TOP,
        "Put the bowl on the cookie box on the cabinet",
    ),
    _spatial_task(
        "put the bowl next to the plate on the cabinet",
        _bowls_at("main_table_next_to_plate_region", None),
        "akita_black_bowl_1",
        CABINET_TOP,
        "Put the bowl next to the plate on the cabinet",
    ),
    _spatial_task(
        "put the bowl next to the plate on the stove",
        _bowls_at("main_table_next_to_plate_region", None),
        "akita_black_bowl_1",
        STOVE_BASE,
        "Put the bowl next to the plate on the stove",
    ),
    _spatial_task(
        "put the bowl at table center on the cabinet",
        _bowls_at("main_table_table_center", "main_table_next_to_plate_region"),
        "akita_black_bowl_1",
        CABINET_TOP,
        "Put the bowl at table center on the cabinet",
    ),
    _spatial_task(
        "put the bowl at table center on the stove",
        _bowls_at("main_table_table_center", "main_table_next_to_plate_region"),
        "akita_black_bowl_1",
        STOVE_BASE,
        "Put the bowl at table center on the stove",
    ),
)


# ---------------------------------------------------------------------------------------------------------------
# LIBERO-Object floor scene: a basket and six grocery items; the named item sits at one of two pick spots.

# The two spots the paper's two-prompt probe calls "top right" (alphabet soup) and "center" (cream cheese), §8.
_TOP_RIGHT_SPOT: Range = (-0.145, -0.265, -0.095, -0.215)
_CENTER_SPOT: Range = (0.025, -0.125, 0.075, -0.075)
_OTHER_OBJECT_SPOTS: tuple[Range, ...] = (  # other_object_region_1 .. 4; region 0 is the pick spot not taken
    (-0.175, 0.035, -0.125, 0.085),
    (0.075, -0.225, 0.125, -0.175),
    (0.125, 0.005, 0.175, 0.055),
    (-0.225, -0.105, -0.175, -0.055),
)
BASKET_CONTAIN = "basket_1_contain_region"


def _object_ood_task(named: str, at_center: bool, distractors: tuple[str, ...], swapped_with: str) -> LiberoTask:
    """LIBERO-Object task for `named`, except that `named` and `swapped_with` trade places: each variable is
    re-typed as the other object, so the goal refers to the variable `swapped_with`_1 (spec §7.4)."""
    assert len(distractors) == 5 and swapped_with in distractors
    target_spot, other_spot = (_CENTER_SPOT, _TOP_RIGHT_SPOT) if at_center else (_TOP_RIGHT_SPOT, _CENTER_SPOT)
    other_spots = (other_spot, *_OTHER_OBJECT_SPOTS)
    regions = (
        floor_region("bin_region", (-0.01, 0.25, 0.01, 0.27)),
        floor_region("target_object_region", target_spot),
        *(floor_region(f"other_object_region_{i}", spot) for i, spot in enumerate(other_spots)),
        site("basket_1", "contain_region"),
    )
    swap = {named: swapped_with, swapped_with: named}
    variables = (named, "basket", *distractors)
    objects = tuple((f"{v}_1", swap.get(v, v)) for v in variables)
    init = (
        on(f"{named}_1", "floor_target_object_region"),
        *(on(f"{d}_1", f"floor_other_object_region_{i}") for i, d in enumerate(distractors)),
        on("basket_1", "floor_bin_region"),
    )
    scene = Scene(FLOOR_PROBLEM, (("floor", "floor"),), objects, regions, init)
    pretty = named.replace("_", " ")
    return LiberoTask(
        suite=OBJECT_OOD,
        language=f"pick up the {pretty} and place it in the basket",
        scene=scene,
        goal=(inside(f"{swapped_with}_1", BASKET_CONTAIN),),
        # Not updated by the paper: still names the variable that now holds the other object.
        obj_of_interest=(f"{named}_1", "basket_1"),
        reference_language=f"Pick the {pretty} and place it in the basket",
    )


# Order of the reference folder's tasks_info.txt (the upstream libero_object task map orders them differently).
LIBERO_OBJECT_OOD: tuple[LiberoTask, ...] = (
    _object_ood_task(
        "alphabet_soup", False, ("salad_dressing", "cream_cheese", "milk", "tomato_sauce", "butter"), "tomato_sauce"
    ),
    _object_ood_task(
        "cream_cheese", True, ("alphabet_soup", "milk", "tomato_sauce", "butter", "orange_juice"), "butter"
    ),
    _object_ood_task(
        "milk", False, ("cream_cheese", "tomato_sauce", "butter", "orange_juice", "chocolate_pudding"), "orange_juice"
    ),
    _object_ood_task(
        "tomato_sauce", True, ("milk", "butter", "orange_juice", "chocolate_pudding", "bbq_sauce"), "butter"
    ),
    _object_ood_task(
        "butter",
        False,
        ("tomato_sauce", "orange_juice", "chocolate_pudding", "bbq_sauce", "ketchup"),
        "chocolate_pudding",
    ),
    _object_ood_task(
        "orange_juice", True, ("butter", "chocolate_pudding", "bbq_sauce", "ketchup", "salad_dressing"), "ketchup"
    ),
    _object_ood_task(
        "chocolate_pudding",
        False,
        ("orange_juice", "bbq_sauce", "ketchup", "salad_dressing", "alphabet_soup"),
        "bbq_sauce",
    ),
    _object_ood_task(
        "bbq_sauce",
        True,
        ("chocolate_pudding", "ketchup", "salad_dressing", "alphabet_soup", "cream_cheese"),
        "salad_dressing",
    ),
    _object_ood_task(
        "ketchup", False, ("bbq_sauce", "salad_dressing", "alphabet_soup", "cream_cheese", "milk"), "milk"
    ),
    _object_ood_task(
        "salad_dressing", True, ("ketchup", "alphabet_soup", "cream_cheese", "milk", "tomato_sauce"), "milk"
    ),
)

LIBERO_OOD_SUITES: dict[str, tuple[LiberoTask, ...]] = {
    GOAL_OOD: LIBERO_GOAL_OOD,
    SPATIAL_OOD: LIBERO_SPATIAL_OOD,
    OBJECT_OOD: LIBERO_OBJECT_OOD,
}


def get_suite(suite_name: str) -> tuple[LiberoTask, ...]:
    try:
        return LIBERO_OOD_SUITES[suite_name]
    except KeyError:
        raise KeyError(f"unknown suite {suite_name!r}; known: {', '.join(SUITE_NAMES)}") from None
