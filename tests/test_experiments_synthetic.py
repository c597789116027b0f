"""Stage 8's injection ablation (experiments.synthetic, experiments.augmentation): what enters each fit."""

from pathlib import Path

import pandas as pd

from experiments.augmentation import _rule_injector, _synthetic_injector
from experiments.common import StageResult, StudyContext
from stargal.config import load_config
from stargal.fetch import get_fetcher


def _ctx(tmp_path, quick=False):
    table = pd.DataFrame({
        "field_id": ["1035-6-17", "1043-5-25", "1043-5-25", "7264-3-111", "8162-6-80"],
        "split": ["train", "train", "valid", "train", "test"],
        "label": ["star", "galaxy", "star", "galaxy", "star"],
    })
    ctx = StudyContext(config=load_config(), fetcher=get_fetcher(sas_url="file:///nowhere", cache_dir=tmp_path),
                       table=table, out_dir=Path(tmp_path), quick=quick)
    ctx.record("baselines", StageResult(numbers={"rule_boundary": 0.171}, markdown=""))
    return ctx


def test_injectors_use_the_fitting_rows_fields_only(tmp_path):
    ctx = _ctx(tmp_path)
    # the study's train split by default
    inj = _synthetic_injector(ctx, 3)
    assert inj.fields == ["1035-6-17", "1043-5-25", "7264-3-111"] and inj.n_objects == 3
    assert inj.label == "truth" and inj.random_state == 3
    # a held-out fold: the held-out field's frames never receive objects, and the count follows the rows
    fold = ctx.rows("train", "valid")
    fold = fold[fold["field_id"] != "1043-5-25"]
    inj = _synthetic_injector(ctx, 4, fold)
    assert inj.fields == ["1035-6-17", "7264-3-111"] and inj.n_objects == 2


def test_rule_injector_takes_the_folds_boundary(tmp_path):
    ctx = _ctx(tmp_path)
    inj = _rule_injector(ctx, 0)
    assert inj.label == "rule" and inj.rule_boundary == 0.171  # the study's rule (stage 5)
    fold = ctx.rows("train")[lambda t: t["field_id"] != "1035-6-17"]
    inj = _rule_injector(ctx, 0, fold, boundary=0.2)
    assert inj.rule_boundary == 0.2 and inj.fields == ["1043-5-25", "7264-3-111"]
