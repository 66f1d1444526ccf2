import dataclasses
from pathlib import Path

import pytest
import torch

from ffnlab.errors import UsageError
from ffnlab.lab.config import DEFAULT_VARIANTS, PRESETS, CompareConfig
from ffnlab.variants import variant_names

# A value for every field, none of them the default.
EVERY_FIELD = {
    "preset": "smoke", "out": Path("/tmp/ffnlab-out"), "variants": ("swiglu", "relu"),
    "device": torch.device("cpu", 0), "dtype": torch.bfloat16, "seed": 3, "seeds": 2,
    "steps": 7, "data": Path("texts/a.txt"), "backend": "reference", "optimizer": "adamw",
    "nproc": 2,
    "dist_timeout": 30.0, "json": True, "resolution": 0.05, "max_seeds": 3, "workers": 1,
    "data_fraction": 0.5, "time_budget": 60.0, "dim": 16, "layers": 2, "tune": True,
    "lr_grid": (0.01, 0.02, 0.04), "tuning_seeds": 3,
}


# --ray excludes --nproc and --workers: it is set in a configuration of its own.
WITH_RAY = {**{k: v for k, v in EVERY_FIELD.items() if k not in ("nproc", "workers")},
            "ray": "auto"}


def test_every_field_is_set_above():
    assert set(EVERY_FIELD) | {"ray"} == {f.name for f in dataclasses.fields(CompareConfig)}
    default = CompareConfig()
    for name, value in EVERY_FIELD.items():
        assert getattr(default, name) != value, name


def test_json_round_trip_keeps_every_field():
    cfg = CompareConfig(**EVERY_FIELD)
    back = CompareConfig.from_json(cfg.to_json())
    assert back == cfg
    assert {f.name: getattr(back, f.name) for f in dataclasses.fields(back)} == {
        **EVERY_FIELD, "ray": None}
    assert CompareConfig.from_json(CompareConfig().to_json()) == CompareConfig()
    ray = CompareConfig(**WITH_RAY)
    assert CompareConfig.from_json(ray.to_json()) == ray and ray.ray == "auto"


def test_defaults_and_normalisation():
    cfg = CompareConfig(out="runs/x", data="t.txt", device="cpu", variants=("silu", "swish"))
    assert cfg.out == Path("runs/x") and cfg.data == Path("t.txt")
    assert cfg.device == torch.device("cpu") and cfg.variants == ("swish",)
    assert CompareConfig().variants == DEFAULT_VARIANTS
    assert CompareConfig(preset="smoke").variants == tuple(variant_names())
    assert CompareConfig(variants=("all",)).variants == tuple(variant_names())
    assert DEFAULT_VARIANTS == ("relu", "gelu", "swish", "glu", "geglu", "swiglu", "relu2")
    assert CompareConfig(seeds=3, max_seeds=8).seed_budget == 8
    assert CompareConfig(preset="smoke").seed_budget == 1  # smoke: no adaptive seeding
    assert CompareConfig(workers=3).worker_count() == 3
    assert CompareConfig().optimizer_name == "muon" and CompareConfig().resolved()[2].steps == 600
    assert CompareConfig(preset="smoke").optimizer_name == "adamw"
    assert CompareConfig().time_budget_s == 570.0 and CompareConfig(preset="smoke").time_budget_s is None
    assert CompareConfig(time_budget=float("inf")).time_budget_s is None
    assert CompareConfig(nproc=2).worker_count() == 1
    assert CompareConfig().tuning and not CompareConfig(preset="smoke").tuning
    assert CompareConfig(tune=False).tuning is False
    assert CompareConfig(preset="smoke", tuning_seeds=1).tuning  # asking for seeds asks for it
    assert CompareConfig().tuning_grid() == pytest.approx((0.012, 0.024, 0.048))
    assert CompareConfig(seed=4).tuning_seed_list() == [1004, 1005]
    assert CompareConfig(preset="quick").seed_list() == list(range(PRESETS["quick"].seeds))
    assert CompareConfig(seed=5, seeds=3).seed_list() == [5, 6, 7]
    assert CompareConfig(dtype=torch.bfloat16).dtype_name == "bfloat16"
    _, _, train = CompareConfig(preset="smoke", steps=8).resolved()
    assert train.steps == 8


@pytest.mark.parametrize("kw, needle", [
    ({"preset": "quik"}, "did you mean 'quick'"),
    ({"steps": 0}, "--steps must be a positive integer, got 0"),
    ({"seeds": 0}, "--seeds must be a positive integer, got 0"),
    ({"seed": -1}, "--seed must be a non-negative integer, got -1"),
    ({"backend": "fusd"}, "did you mean 'fused'"),
    ({"variants": ("swigl",)}, "did you mean 'swiglu'"),
    ({"nproc": 0}, "--nproc must be a positive integer, got 0"),
    ({"dtype": torch.int32}, "dtype torch.int32 is not supported"),
    ({"device": "meta"}, "device 'meta' is not supported"),
    ({"resolution": 0.0}, "--resolution must be a positive number of bits per byte, got 0.0"),
    ({"resolution": -0.02}, "--resolution must be a positive number"),
    ({"resolution": float("nan")}, "--resolution must be a positive number"),
    ({"max_seeds": 1}, "--max-seeds must be an integer >= 2"),
    ({"seeds": 4, "max_seeds": 3}, "--max-seeds (3) is below --seeds (4)"),
    ({"workers": 0}, "--workers must be a positive integer, got 0"),
    ({"workers": 2, "nproc": 2}, "--workers and --nproc exclude each other"),
    ({"data_fraction": 0.0}, "--data-fraction must be in (0, 1], got 0.0"),
    ({"time_budget": 0}, "--time-budget must be a positive number of seconds, got 0"),
    ({"ray": ""}, "--ray takes a Ray address"),
    ({"ray": "auto", "workers": 2}, "--ray schedules the runs itself"),
    ({"ray": "auto", "nproc": 2}, "--ray schedules the runs itself"),
    ({"data_fraction": 1.5}, "--data-fraction must be in (0, 1], got 1.5"),
])
def test_bad_values_are_one_clear_usage_error(kw, needle):
    with pytest.raises(UsageError) as info:
        CompareConfig(**kw)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_from_json_refuses_unknown_keys_and_non_objects():
    with pytest.raises(UsageError, match="unknown compare option.*stepz"):
        CompareConfig.from_dict({"stepz": 3})
    with pytest.raises(UsageError, match="JSON object, got list"):
        CompareConfig.from_json("[]")
    with pytest.raises(UsageError, match="unknown dtype 'int8'"):
        CompareConfig.from_dict({"dtype": "int8"})
