"""experiments/studies.py: every study names known conditions, methods and backbones, and the
settings of each method and variant build the method's config."""

from __future__ import annotations

import dataclasses

from backbones import BACKBONES
from experiments.studies import ALL_METHODS, CONDITIONS, METHOD_SETTINGS, STUDIES
from methods import METHODS


def test_every_study_names_known_conditions_methods_and_backbones():
    for name, study in STUDIES.items():
        assert set(study.conditions) <= set(CONDITIONS), name
        assert set(study.methods) <= set(METHODS), name
        assert set(study.backbones) | set(study.backbone_of.values()) <= set(BACKBONES), name


def test_the_settings_of_every_method_and_variant_build_its_config():
    assert set(METHOD_SETTINGS) == set(ALL_METHODS)
    for method, settings in METHOD_SETTINGS.items():
        for condition in CONDITIONS:
            for backbone in BACKBONES:
                METHODS[method].Config(**settings.paper_options(condition, backbone))
    for study in STUDIES.values():
        for variant in study.variants:
            for method in study.methods:
                dataclasses.replace(METHODS[method].Config(), **dict(variant.options))
