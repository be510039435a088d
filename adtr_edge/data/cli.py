"""CLI commands of the data area: generate the sample dataset, check a dataset before training."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .datasets import guard_disjoint, is_mvtec_root, load_dataset
from .generate import generate_sample_dataset


def register(app: typer.Typer) -> None:
    @app.command("generate-data")
    def generate_data(
        root: Path = typer.Argument(..., help="Folder to create the category folder in."),
        category: str = typer.Option("tiles", help="Name of the category folder."),
        n_train: int = typer.Option(60, help="Normal training images."),
        n_test_good: int = typer.Option(20, help="Normal test images."),
        n_test_defect: int = typer.Option(20, help="Defect test images (the scene's defect kinds in turn)."),
        height: int = typer.Option(128, help="Image height in pixels."),
        width: int = typer.Option(128, help="Image width in pixels."),
        seed: int = typer.Option(0, help="Random seed: the same seed writes the same images."),
        overwrite: bool = typer.Option(False, help="Replace an existing category folder."),
        scene: str = typer.Option("weave", help="weave: a fixtured woven texture; bolts: one bolt anywhere in the frame at any angle "
                                               "(defects: chip, scratch, stain, burr)."),
    ) -> None:
        """Write a generated MVTec-AD style dataset (textures or unfixtured parts) with drawn defects and exact masks."""
        path = generate_sample_dataset(root, n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect,
                                       size=(height, width), seed=seed, category=category, overwrite=overwrite, scene=scene)
        typer.echo(f"wrote {path}")

    @app.command("check-data")
    def check_data(
        root: Path = typer.Argument(..., help="MVTec-AD category folder or a folder of normal images."),
    ) -> None:
        """Decode every image and mask, check train/test are disjoint, and print counts, fingerprints and
        how much the normals' exposure varies (see train --normalize-exposure)."""
        train = load_dataset(root, "train").validate()
        report = {"train": {**train.summary(), **train.exposure_spread()}}
        if is_mvtec_root(root):
            test = load_dataset(root, "test").validate()
            guard_disjoint(train, test)
            report["test"] = test.summary()
        typer.echo(json.dumps(report, indent=2))
