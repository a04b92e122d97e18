"""Every generated LIBERO-OOD task builds a LIBERO env, places its objects and starts unsolved (real simulator)."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import multiprocessing

import pytest

from textlatent.libero.sim import OOD_SUITES, suite_tasks

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("libero") is None, reason="the LIBERO simulator group is not installed"
    ),
]


def _build(suite: str, task_id: int, workdir: str) -> dict:
    from textlatent.libero.sim import LiberoEnv, prepare

    prepare()
    task = suite_tasks(suite)[task_id]
    env = LiberoEnv(task, workdir=workdir, resolution=64)
    try:
        obs = env.reset(0, 7)
        return {
            "task": task.name,
            "objects": sorted(k.removesuffix("_pos") for k in obs if k.endswith("_pos") and not k.startswith("robot")),
            "of_interest": list(env.env.obj_of_interest),
            "solved_at_reset": env.check_success(),
            "image": obs["agentview_image"].shape,
        }
    finally:
        env.close()


def test_every_ood_task_builds_and_starts_unsolved(tmp_path):
    jobs = [(suite, i) for suite in OOD_SUITES for i in range(len(suite_tasks(suite)))]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = {job: pool.submit(_build, *job, str(tmp_path / f"{job[0]}-{job[1]}")) for job in jobs}
        results = {job: future.result(timeout=600) for job, future in futures.items()}
    assert len(results) == 30
    for (suite, task_id), result in results.items():
        where = f"{suite} #{task_id} {result['task']}"
        assert result["image"] == (64, 64, 3), where
        assert not result["solved_at_reset"], where
        # the objects the goal names are in the scene (obs carries a pose per movable object)
        movable = set(result["objects"])
        assert [o for o in result["of_interest"] if o in movable or o.startswith(("flat_stove", "wooden_cabinet"))]
