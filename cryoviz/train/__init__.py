"""Training engine for (heterogeneous) volume models with known poses.

A method is a recipe (:mod:`cryoviz.train.recipes`), not a fork of the loop
(:mod:`cryoviz.train.loop`).
"""

from cryoviz.train.data import ParticleBatches, chunked_order, fourier_downsample
from cryoviz.train.encoders import LatentTable, MLPEncoder
from cryoviz.train.evaluate import Run, eval_volumes, load_run, voxel_size, write_volumes
from cryoviz.train.loop import TrainProgress, iter_train, train
from cryoviz.train.recipes import RECIPES, Recipe, get_recipe

__all__ = [
    "ParticleBatches", "chunked_order", "fourier_downsample", "LatentTable", "MLPEncoder",
    "Run", "eval_volumes", "load_run", "voxel_size", "write_volumes", "TrainProgress",
    "iter_train", "train",
    "RECIPES", "Recipe", "get_recipe",
]
