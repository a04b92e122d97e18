"""LIBERO benchmark support: the paper's OOD suites as data and BDDL text for them, openpi's client protocol and
resumable run directories for results."""

from textlatent.libero.bddl import ParsedRegion, ParsedTask, parse_bddl, to_bddl, write_suite
from textlatent.libero.protocol import (
    LIBERO_DUMMY_ACTION,
    MAX_STEPS,
    NUM_STEPS_WAIT,
    REPLAN_STEPS,
    ActionPlan,
    EpisodeLoop,
    EpisodeOutcome,
    policy_request,
    quat2axisangle,
    run_episode,
)
from textlatent.libero.results import EpisodeRecord, RunDirectory, wilson_interval
from textlatent.libero.suites import LIBERO_OOD_SUITES, SUITE_NAMES, LiberoTask, Region, Relation, Scene, get_suite

__all__ = [
    "LIBERO_DUMMY_ACTION",
    "LIBERO_OOD_SUITES",
    "MAX_STEPS",
    "NUM_STEPS_WAIT",
    "REPLAN_STEPS",
    "SUITE_NAMES",
    "ActionPlan",
    "EpisodeLoop",
    "EpisodeOutcome",
    "EpisodeRecord",
    "LiberoTask",
    "ParsedRegion",
    "ParsedTask",
    "Region",
    "Relation",
    "RunDirectory",
    "Scene",
    "get_suite",
    "parse_bddl",
    "policy_request",
    "quat2axisangle",
    "run_episode",
    "to_bddl",
    "wilson_interval",
    "write_suite",
]
