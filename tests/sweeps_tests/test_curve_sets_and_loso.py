"""The benchmark's bookkeeping on tiny synthetic curve sets: grids read from recordings, a
target a one-epoch dip cannot set, held-out test loss, and leave-one-set-out choices that
never use the set they are reported on. Pure and fast: no sweeps run."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from gemini_backend.errors import InvalidRequestError
from gemini_backend.replay.backend import ReplayPoint
from gemini_backend.replay.backend import ReplayRecord
from gemini_backend.replay.backend import load_curves
from gemini_backend.replay.backend import write_curves_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import curve_sets  # noqa: E402
import leave_one_out  # noqa: E402
from leave_one_out import Cell  # noqa: E402


def record(batch: int, multiplier: float, evals: list[float], *, seed: int = 0,
           tests: list[float] | None = None) -> ReplayRecord:
    points = tuple(ReplayPoint(step=e, epoch=e, loss=v + 0.1, eval_loss=v, time_s=float(e),
                               test_loss=None if tests is None else tests[e - 1])
                   for e, v in enumerate(evals, start=1))
    return ReplayRecord(params={"epochs": len(evals), "batch_size": batch,
                                "learning_rate_multiplier": multiplier},
                        curve=points, duration_s=float(len(evals)), tokens_per_epoch=100,
                        seed=seed)


def test_the_grid_is_read_from_the_recordings() -> None:
    records = [record(b, m, [1.0, 0.9, 0.8]) for b in (2, 4, 8) for m in (0.1, 1.0, 10.0)]
    grid = curve_sets.grid_of(records)
    assert grid == curve_sets.Grid(max_epochs=3, batch_sizes=(2, 4, 8), multiplier_low=0.1,
                                   multiplier_high=10.0)
    assert grid.vertex_batch_size == 4  # no 16 recorded: the middle batch size
    spaces = grid.spaces()
    assert spaces["vertex"]["batch_size"] == {"value": 4}
    assert spaces["all"]["batch_size"] == {"choices": [2, 4, 8]}
    assert spaces["all"]["learning_rate_multiplier"] == {"low": 0.1, "high": 10.0, "log": True}


def test_records_of_different_lengths_are_refused_naming_the_file() -> None:
    with pytest.raises(ValueError, match=r"curves_x\.json: records end at different epochs"):
        curve_sets.grid_of([record(8, 1.0, [1.0, 0.9]), record(8, 2.0, [1.0])],
                           "curves_x.json")


def test_a_one_epoch_dip_of_one_run_does_not_set_the_target() -> None:
    steady = [1.0, 0.8, 0.7, 0.7, 0.7]
    dipping = [1.0, 0.8, 0.3, 0.7, 0.7]  # a one-epoch dip in one seed
    records = [record(8, 1.0, steady, seed=0), record(8, 1.0, dipping, seed=1),
               record(8, 3.0, [1.0, 0.9, 0.9, 0.9, 0.9])]
    target = curve_sets.target_of(records, "eval_loss", gap=0.0)
    # The dip would make it 0.5 (seed mean) or 0.3 (one run); smoothed it is damped.
    assert target > 0.6
    assert target == pytest.approx(min(curve_sets.smoothed(
        {1: 1.0, 2: 0.8, 3: 0.5, 4: 0.7, 5: 0.7}).values()))


def test_the_target_of_the_vertex_space_comes_from_its_batch_size_only() -> None:
    records = [record(16, 1.0, [1.0, 0.9, 0.9]), record(8, 1.0, [1.0, 0.5, 0.5])]
    assert curve_sets.target_of(records, "eval_loss", gap=0.0, batch_size=16) > 0.85
    assert curve_sets.target_of(records, "eval_loss", gap=0.0) < 0.6


def test_quality_is_judged_on_test_loss_where_every_epoch_has_one() -> None:
    with_test = [record(8, 1.0, [1.0, 0.9], tests=[1.1, 1.0])]
    assert curve_sets.quality_field(with_test) == "test_loss"
    assert curve_sets.loss_by_epoch(with_test[0], "test_loss") == {1: 1.1, 2: 1.0}
    assert curve_sets.quality_field([*with_test, record(8, 2.0, [1.0, 0.9])]) == "eval_loss"


def test_test_loss_round_trips_and_old_files_still_load(tmp_path: Path) -> None:
    path = write_curves_file([record(8, 1.0, [1.0, 0.9], tests=[1.2, 1.1]),
                              record(8, 2.0, [1.0, 0.8])], tmp_path / "curves_new.json")
    loaded = load_curves(path)
    assert [p.test_loss for p in loaded[0].curve] == [1.2, 1.1]
    assert [p.test_loss for p in loaded[1].curve] == [None, None]
    assert "test_loss" not in path.read_text().split('"params"')[2]  # unset: left out
    old = tmp_path / "old.json"
    old.write_text('[{"params": {"epochs": 1, "learning_rate_multiplier": 1.0}, '
                   '"curve": [{"step": 1, "epoch": 1, "loss": 2.0, "eval_loss": 1.5}], '
                   '"duration_s": 1.0}]')
    assert load_curves(old)[0].curve[0].test_loss is None
    old.write_text(old.read_text().replace('"eval_loss": 1.5', '"test_loss": "x"'))
    with pytest.raises(InvalidRequestError, match=r"record 0: curve\.0\.test_loss"):
        load_curves(old)


def cells(ratio: float, reached: int = 10) -> list[Cell]:
    return [Cell("vertex", ratio, reached, 10), Cell("all", ratio, reached, 10)]


def test_a_sets_figure_never_comes_from_a_choice_made_on_that_set() -> None:
    sets = ["a", "b", "c"]
    # "lucky" is best on c alone; "steady" is best on a and b.
    results = {("steady", "a"): cells(0.5), ("steady", "b"): cells(0.5),
               ("steady", "c"): cells(0.9),
               ("lucky", "a"): cells(0.8), ("lucky", "b"): cells(0.8),
               ("lucky", "c"): cells(0.01)}
    figures = {f.held_out: f for f in leave_one_out.leave_one_set_out(
        ["steady", "lucky"], sets, results)}
    assert figures["c"].chosen == "steady"  # chosen on a and b: c's own 0.01 is not seen
    assert figures["c"].chosen_on == ("a", "b")
    assert [cell.ratio for cell in figures["c"].cells] == [0.9, 0.9]  # reported on c
    for name, figure in figures.items():
        assert name not in figure.chosen_on
    # Whatever a held-out set's own results are, its choice does not move.
    for poison in (0.0001, 1000.0, math.inf, math.nan):
        poisoned = {**results, ("lucky", "c"): cells(poison), ("steady", "c"): cells(poison)}
        again = leave_one_out.leave_one_set_out(["steady", "lucky"], sets, poisoned)
        assert next(f for f in again if f.held_out == "c").chosen == "steady"


def test_a_safe_candidate_wins_over_a_cheaper_one_that_misses_the_target() -> None:
    results = {("cheap", "a"): cells(0.2, reached=8), ("cheap", "b"): cells(0.2),
               ("safe", "a"): cells(0.9), ("safe", "b"): cells(0.9)}
    assert leave_one_out.choose(["cheap", "safe"], ["a", "b"], results) == "safe"
    # With no safe candidate the one that misses least is chosen, cost second.
    unsafe = {("cheap", "a"): cells(0.2, reached=5), ("safer", "a"): cells(0.9, reached=8)}
    assert leave_one_out.choose(["cheap", "safer"], ["a"], unsafe) == "safer"


def test_a_target_no_method_reaches_does_not_make_the_choice_arbitrary() -> None:
    # Set "a" is out of every candidate's reach (2 of 10). Among the rest, "misses" also
    # falls short on "b": it must lose to "safe" however cheap it is.
    results = {("misses", "a"): cells(0.2, reached=2), ("misses", "b"): cells(0.2, reached=6),
               ("safe", "a"): cells(0.9, reached=2), ("safe", "b"): cells(0.9)}
    assert leave_one_out.choose(["misses", "safe"], ["a", "b"], results) == "safe"


def test_one_set_cannot_be_left_out() -> None:
    with pytest.raises(ValueError, match="at least two"):
        leave_one_out.leave_one_set_out(["x"], ["a"], {("x", "a"): cells(1.0)})


def test_the_candidate_grid_holds_no_pruner_no_patience_and_a_sparing_pruner() -> None:
    candidates = leave_one_out.policy_candidates()
    assert "no-pruner/no-patience/start6" in candidates
    assert "pruner" not in candidates["no-pruner/no-patience/start6"]
    assert "patience" not in candidates["no-pruner/no-patience/start6"]["epochs"]
    assert candidates["leader2.0@4/patience4/start6"] == {
        "epochs": {"mode": "from_curve", "patience": 4},
        "sampler": {"n_startup_trials": 6, "start": "stratified"},
        "pruner": {"kind": "behind_leader", "ratio": 2.0, "min_epochs": 4}}
    assert candidates["leader1.3@2+spare/no-patience/start6"]["pruner"] == {
        "kind": "behind_leader", "ratio": 1.3, "min_epochs": 2, "spare_catching_up": True}
    assert geomean_of([0.5, 2.0]) == pytest.approx(1.0)


def geomean_of(ratios: list[float]) -> float:
    return leave_one_out.geomean(ratios)


@pytest.fixture(scope="module")
def recorder() -> dict[str, object]:
    import runpy
    return runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts"
                              / "record_curve_sets.py"), run_name="record_curve_sets")


def test_the_new_tasks_answer_correctly(recorder: dict) -> None:
    import random
    generators = recorder["GENERATORS"]
    sort = generators["sort_letters"](random.Random(0))
    assert all(e["output"] == "".join(sorted(e["text_input"])) for e in sort)
    vowels = generators["vowel_count"](random.Random(0))
    assert all(int(e["output"]) == sum(c in "aeiou" for c in e["text_input"]) for e in vowels)
    dates = generators["date_format"](random.Random(0))
    assert all(len(e["output"]) == 10 and e["text_input"].split()[2] == e["output"][:4]
               for e in dates)
    assert len({e["text_input"] for e in dates}) == len(dates) == recorder["N_EXAMPLES"]


def test_the_test_split_is_disjoint_and_the_validation_split_is_a_sweeps(
        recorder: dict, tmp_path: Path) -> None:
    import json
    import random

    from sweeps.data.dataset import load_dataset
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in
                            recorder["GENERATORS"]["sort_letters"](random.Random(1))))
    train, validation, test = recorder["three_splits"](path)
    texts = [{e.text_input for e in part} for part in (train, validation, test)]
    assert all(texts) and not (texts[0] & texts[1] or texts[0] & texts[2]
                               or texts[1] & texts[2])
    assert sum(map(len, texts)) == recorder["N_EXAMPLES"]
    # Validation is what a sweep on this file would split off, so it selects on the same.
    sweep_validation = load_dataset(path).split(recorder["VALIDATION_SPLIT"],
                                                recorder["SPLIT_SEED"])[1]
    assert validation == sweep_validation
    assert recorder["three_splits"](path) == (train, validation, test)  # deterministic


def test_a_bad_plan_entry_is_named(recorder: dict, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('[{"task": "sort_letters", "out": "a.json"}, '
                    '{"task": "x", "out": "b.json", "batch": [4]}]')
    with pytest.raises(SystemExit, match=r"plan\.json: set 1: unknown key 'batch'"):
        recorder["read_plan"](plan)
    plan.write_text('[{"task": "x", "out": "b.json", "model": "no/such/dir"}]')
    with pytest.raises(SystemExit, match=r"set 0: model 'no/such/dir': no such directory; "
                                         r"build a tiny one"):
        recorder["read_plan"](plan)


def test_the_shipped_plan_covers_what_the_benchmark_needs() -> None:
    import json
    plan = json.loads((Path(__file__).resolve().parents[2] / "scripts"
                       / "curve_sets_plan.json").read_text())
    assert len(plan) >= 8 and all(entry["epochs"] >= 12 for entry in plan)
    assert len({entry["model"] for entry in plan}) == 2
    assert len({tuple(entry["batch_sizes"]) for entry in plan}) >= 2
    assert len({entry["out"] for entry in plan}) == len(plan)


def test_plateau_regret_is_the_loss_given_up_and_its_choice_never_sees_the_held_out_set(
        ) -> None:
    import runpy
    bench = runpy.run_path(str(Path(__file__).resolve().parents[2] / "benchmarks"
                               / "plateau_regret.py"), run_name="plateau_regret")
    run = record(8, 1.0, [2.0, 1.2, 1.0, 0.9, 0.88, 0.87], tests=[2.1, 1.3, 1.1, 1.0, 1.0, 0.9])
    assert bench["regret"](run, 4, "eval_loss") == pytest.approx(0.03)
    assert bench["regret"](run, 6, "test_loss") == pytest.approx(0.0)
    assert bench["regret"](record(8, 1.0, [1.0, 0.9]), 2, "test_loss") is None
    # The shipped rule stops where the curve is within 3% of its range: an earlier epoch
    # than the smoothed minimum, and so a positive regret.
    shipped = bench["plateau_rule"]()(*bench["curves_of"](run))
    near_minimum = bench["plateau_rule"](1e-9)(*bench["curves_of"](run))
    assert shipped <= near_minimum
    # The held-out set's own curves do not move its choice.
    sets = {"a": [run], "b": [run], "c": [record(8, 1.0, [2.0, 1.0, 1.5, 1.5, 1.5, 1.5])]}
    chosen = bench["choose_tolerance"](sets, "c")
    assert chosen == bench["choose_tolerance"]({**sets, "c": [run]}, "c")


def test_every_candidate_is_a_valid_sweep_on_a_sets_own_grid_and_is_judged_on_test_loss(
        tmp_path: Path) -> None:
    import runpy
    curves = tmp_path / "curves_toy.json"
    write_curves_file([record(b, m, [2.0, 1.5 / m, 1.2 / m, 1.1 / m, 1.1 / m], seed=s,
                              tests=[2.1, 1.6 / m, 1.3 / m, 1.2 / m, 1.25 / m])
                       for b in (8, 32) for m in (1.0, 2.0) for s in (0, 1)], curves)
    bench = runpy.run_path(str(Path(__file__).resolve().parents[2] / "benchmarks"
                               / "cost_efficiency.py"), run_name="cost_efficiency")
    for name in bench["CANDIDATES"]:
        config = bench["make_config"](tmp_path, str(curves), "all",
                                      bench["ALL_METHODS"][name], seed=0, n_trials=3)
        assert config.search_space.epochs.max == 5  # the set's recorded epochs, not 8
    vertex = bench["make_config"](tmp_path, str(curves), "vertex", bench["METHODS"]["tpe"],
                                  seed=0, n_trials=3)
    assert vertex.search_space.epochs.high == 5
    truth = bench["_truth"](str(curves))
    assert truth.field == "test_loss"
    assert truth.target("all") == pytest.approx(1.02 * min(
        curve_sets.smoothed({1: 2.1, 2: 0.8, 3: 0.65, 4: 0.6, 5: 0.625}).values()))
    # A real replayed sweep: its incumbent is scored on the served run's test loss.
    (space, dataset, method), trace = bench["run_one"](
        ("all", str(curves), "policy", 0, 3, 1))
    assert (space, method) == ("all", "policy") and len(trace.points) == 3
    test_values = {round(p.test_loss, 5) for r in load_curves(curves) for p in r.curve}
    assert {q[0] for _, q in trace.points} <= test_values | {math.inf}
