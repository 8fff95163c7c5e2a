"""``KEY=VALUE`` recipe settings (cryoviz.train.recipe_settings)."""

from __future__ import annotations

import pytest

from cryoviz.errors import InputError
from cryoviz.train.recipe_settings import parse_setting


def test_parse_setting_converts_to_the_fields_type():
    assert parse_setting("gaussians=512") == ("gaussians", 512)
    assert parse_setting("beta=0.5") == ("beta", 0.5)
    assert parse_setting("frc_max_resolution_angstrom=8") == ("frc_max_resolution_angstrom",
                                                              8.0)
    assert parse_setting("encoder-centre=false") == ("encoder_centre", False)
    assert parse_setting("move_amplitudes=yes") == ("move_amplitudes", True)
    assert parse_setting("domain=hartley") == ("domain", "hartley")
    assert parse_setting("box=none") == ("box", None)  # an optional field
    assert parse_setting("gaussians=none") == ("gaussians", None)  # the box-scaled default


@pytest.mark.parametrize("text, message", [
    ("gaussians=5.5", "--set gaussians: expected an integer or none, got 5.5"),
    ("zdim=none", "--set zdim: expected an integer, got none"),
    ("encoder_centre=maybe", "--set encoder_centre: expected true or false"),
    ("lr=fast", "--set lr: expected a finite number, got fast"),
    ("lr=nan", "--set lr: expected a finite number, got nan"),
    ("beta=inf", "--set beta: expected a finite number or none, got inf"),
    ("colour=3", "--set: expected a recipe setting, one of batch_size, beta"),
    ("zdim", "--set: expected KEY=VALUE"),
    ("name=other", "--set: expected a recipe setting"),  # the recipe's name is --recipe
])
def test_parse_setting_rejects_bad_input_naming_the_option(text, message):
    with pytest.raises(InputError) as err:
        parse_setting(text)
    assert message in str(err.value)
