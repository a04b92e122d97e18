"""LIBERO benchmark support: the paper's OOD suites as data and BDDL text for them."""

from textlatent.libero.bddl import ParsedRegion, ParsedTask, parse_bddl, to_bddl, write_suite
from textlatent.libero.suites import LIBERO_OOD_SUITES, SUITE_NAMES, LiberoTask, Region, Relation, Scene, get_suite

__all__ = [
    "LIBERO_OOD_SUITES",
    "SUITE_NAMES",
    "LiberoTask",
    "ParsedRegion",
    "ParsedTask",
    "Region",
    "Relation",
    "Scene",
    "get_suite",
    "parse_bddl",
    "to_bddl",
    "write_suite",
]
