"""LIBERO BDDL text: writing tasks (`to_bddl`, `write_suite`) and a small parser (`parse_bddl`) to compare them.

The writer follows the layout of LIBERO's own generated files. The parser reads what LIBERO's
`robosuite_parse_problem` reads (regions keyed by "<target>_<name>", objects and fixtures by name) but keeps the
case of the text and the order-free parts as plain containers, so two files can be compared for content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from textlatent.libero.suites import LiberoTask, Region, get_suite

Relation = tuple[str, ...]  # ("On", "cream_cheese_1", "basket_1")


# ---------------------------------------------------------------------------------------------------------------
# writing


def _number(value: float) -> str:
    return repr(float(value))


def _region_block(region: Region) -> list[str]:
    lines = [f"      ({region.name}", f"          (:target {region.target})"]
    if region.ranges:
        lines.append("          (:ranges (")
        lines += [f"              ({' '.join(_number(v) for v in r)})" for r in region.ranges]
        lines += ["            )", "          )"]
    if region.yaw_rotation is not None:
        lines.append("          (:yaw_rotation (")
        lines.append(f"              ({' '.join(_number(v) for v in region.yaw_rotation)})")
        lines += ["            )", "          )"]
    lines.append("      )")
    return lines


def _typed_list(entries: tuple[tuple[str, str], ...]) -> list[str]:
    # One line per type: LIBERO's parser maps type -> names, so a second line of the same type would silently
    # replace the first (e.g. the two akita_black_bowl variables of LIBERO-Spatial).
    names_by_type: dict[str, list[str]] = {}
    for name, type_ in entries:
        names_by_type.setdefault(type_, []).append(name)
    return [f"    {' '.join(names)} - {type_}" for type_, names in names_by_type.items()]


def to_bddl(task: LiberoTask) -> str:
    """The task as LIBERO BDDL; the `(:language …)` field is the task's prompt."""
    scene = task.scene
    lines = [
        f"(define (problem {scene.problem_name})",
        "  (:domain robosuite)",
        f"  (:language {task.language})",
        "    (:regions",
    ]
    for region in scene.regions:
        lines += _region_block(region)
    lines += ["    )", "", "  (:fixtures", *_typed_list(scene.fixtures), "  )", ""]
    lines += ["  (:objects", *_typed_list(scene.objects), "  )", ""]
    lines += ["  (:obj_of_interest", *(f"    {name}" for name in task.obj_of_interest), "  )", ""]
    lines += ["  (:init", *(f"    {relation}" for relation in scene.init), "  )", ""]
    goal = " ".join(str(relation) for relation in task.goal)
    lines += ["  (:goal", f"    (And {goal})", "  )", "", ")", ""]
    return "\n".join(lines)


def write_suite(suite_name: str, directory: str | Path) -> list[Path]:
    """Write every task of a suite as `<file name>.bddl` into `directory`; returns the paths in suite order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in get_suite(suite_name):
        path = directory / task.bddl_file_name
        path.write_text(to_bddl(task))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# parsing


@dataclass(frozen=True)
class ParsedRegion:
    name: str
    target: str
    ranges: tuple[tuple[float, ...], ...] = ()
    yaw_rotation: tuple[float, ...] | None = None
    rgba: tuple[float, ...] | None = None


@dataclass
class ParsedTask:
    problem: str = ""
    domain: str = ""
    language: str = ""
    fixtures: dict[str, str] = field(default_factory=dict)  # name -> type
    objects: dict[str, str] = field(default_factory=dict)  # name -> type
    regions: dict[str, ParsedRegion] = field(default_factory=dict)  # "<target>_<name>" -> region
    init: list[Relation] = field(default_factory=list)
    goal: list[Relation] = field(default_factory=list)  # conjuncts of the (And …) goal
    obj_of_interest: list[str] = field(default_factory=list)


_TOKEN = re.compile(r"\(|\)|[^\s()]+")
Sexp = str | list["Sexp"]


def _read_sexp(text: str) -> Sexp:
    text = re.sub(r";[^\n]*", "", text)  # BDDL comments
    stack: list[list[Sexp]] = [[]]
    for token in _TOKEN.findall(text):
        if token == "(":
            stack.append([])
        elif token == ")":
            if len(stack) == 1:
                raise ValueError("unbalanced ')' in BDDL")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(token)
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ValueError("BDDL text is not exactly one balanced expression")
    return stack[0][0]


def _atoms(items: list[Sexp], section: str) -> list[str]:
    if not all(isinstance(i, str) for i in items):
        raise ValueError(f"{section}: expected plain names, got {items}")
    return [str(i) for i in items]


def _typed_names(items: list[Sexp], section: str) -> dict[str, str]:
    """`a b - type c - type2` -> {a: type, b: type, c: type2}."""
    result: dict[str, str] = {}
    pending: list[str] = []
    tokens = _atoms(items, section)
    i = 0
    while i < len(tokens):
        if tokens[i] == "-":
            if i + 1 >= len(tokens) or not pending:
                raise ValueError(f"{section}: dangling '-'")
            for name in pending:
                if name in result:
                    raise ValueError(f"{section}: {name} declared twice")
                result[name] = tokens[i + 1]
            pending = []
            i += 2
        else:
            pending.append(tokens[i])
            i += 1
    if pending:
        raise ValueError(f"{section}: names without a type: {pending}")
    return result


def _relation(item: Sexp, section: str) -> Relation:
    if not isinstance(item, list) or not item:
        raise ValueError(f"{section}: expected a predicate, got {item!r}")
    return tuple(_atoms(item, section))


def _numbers(item: Sexp, section: str) -> tuple[float, ...]:
    if not isinstance(item, list):
        raise ValueError(f"{section}: expected a list of numbers, got {item!r}")
    return tuple(float(x) for x in _atoms(item, section))


def _region(item: Sexp) -> ParsedRegion:
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise ValueError(f"bad region {item!r}")
    name, target = item[0], None
    ranges: tuple[tuple[float, ...], ...] = ()
    yaw = rgba = None
    for attribute in item[1:]:
        if not isinstance(attribute, list) or not attribute:
            raise ValueError(f"region {name}: bad attribute {attribute!r}")
        key = attribute[0]
        if key == ":target":
            target = str(attribute[1])
        elif key == ":ranges":
            ranges = tuple(_numbers(r, f"{name} ranges") for r in attribute[1])
            if any(len(r) != 4 for r in ranges):
                raise ValueError(f"region {name}: a range needs x_min y_min x_max y_max")
        elif key == ":yaw_rotation":
            # LIBERO keeps the last (min max) pair.
            pairs = [_numbers(r, f"{name} yaw_rotation") for r in attribute[1]]
            yaw = pairs[-1]
        elif key == ":rgba":
            rgba = _numbers(attribute[1], f"{name} rgba")
        else:
            raise ValueError(f"region {name}: unknown attribute {key!r}")
    if target is None:
        raise ValueError(f"region {name} has no :target")
    return ParsedRegion(name=name, target=target, ranges=ranges, yaw_rotation=yaw, rgba=rgba)


def parse_bddl(text: str) -> ParsedTask:
    tree = _read_sexp(text)
    if not isinstance(tree, list) or not tree or tree[0] != "define":
        raise ValueError("not a BDDL problem: expected (define …)")
    parsed = ParsedTask()
    for group in tree[1:]:
        if not isinstance(group, list) or not group:
            raise ValueError(f"unexpected top-level item {group!r}")
        head, body = group[0], group[1:]
        if head == "problem":
            parsed.problem = str(body[-1])
        elif head == ":domain":
            parsed.domain = str(body[-1])
        elif head == ":language":
            parsed.language = " ".join(_atoms(body, ":language"))
        elif head == ":regions":
            for item in body:
                region = _region(item)
                key = f"{region.target}_{region.name}"
                if key in parsed.regions:
                    raise ValueError(f"region {key} declared twice")
                parsed.regions[key] = region
        elif head == ":fixtures":
            parsed.fixtures = _typed_names(body, ":fixtures")
        elif head == ":objects":
            parsed.objects = _typed_names(body, ":objects")
        elif head == ":obj_of_interest":
            parsed.obj_of_interest = _atoms(body, ":obj_of_interest")
        elif head == ":init":
            parsed.init = [_relation(item, ":init") for item in body]
        elif head == ":goal":
            if len(body) != 1 or not isinstance(body[0], list):
                raise ValueError(":goal must hold one expression")
            expression = body[0]
            conjuncts = expression[1:] if expression and str(expression[0]).lower() == "and" else [expression]
            parsed.goal = [_relation(item, ":goal") for item in conjuncts]
        else:
            raise ValueError(f"unknown BDDL section {head!r}")
    return parsed
