"""``--task images``: a CNN (SmallResNet trained from scratch, or MobileNetV2 from ImageNet weights) on
Fashion-MNIST."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from rmtkd.adapters import LoadedModel, MobileNetV2Adapter, SmallResNetAdapter
from rmtkd.adapters.vision import MobileNetV2Classifier, SmallResNet, adapter_for
from rmtkd.app.tasks.base import (
    CommandTask, EvalSet, Log, Prepared, Progress, Settings, register_task, sharded, split_train, teacher_everywhere,
    validation_indices,
)
from rmtkd.batching import image_batches
from rmtkd.data import load_fashion_mnist
from rmtkd.distributed import Workers
from rmtkd.persistence import META_FILE
from rmtkd.task import Task
from rmtkd.training import TrainConfig, train


def test_set(eval_samples: int | None) -> tuple[torch.Tensor, list[dict]]:
    """(images, batches of 500) of the first ``eval_samples`` Fashion-MNIST test images (all if None)."""
    images, labels = load_fashion_mnist("test")
    images, labels = images[:eval_samples], labels[:eval_samples]
    return images, image_batches(images, labels, 500)


def latency_batch(images: torch.Tensor) -> dict:
    """A batch of one image."""
    return {"images": images[:1]}


class ImageClassification(CommandTask):
    name = "images"
    adapters = (SmallResNetAdapter, MobileNetV2Adapter)

    def default_out(self, settings: Settings) -> Path:
        return Path("runs") / f"fashion-mnist-{settings.arch}"

    def teacher(self, settings: Settings, images: torch.Tensor, labels: torch.Tensor, out: Path, log: Log,
                progress: Progress) -> LoadedModel:
        """OUT/teacher if an earlier run left one; else --arch trained on the training images."""
        teacher_dir = out / "teacher"
        if (teacher_dir / META_FILE).exists():
            return self.load(teacher_dir)
        torch.manual_seed(settings.seed)
        model = (MobileNetV2Classifier.pretrained(num_classes=10) if settings.arch == "mobilenet_v2"
                 else SmallResNet(in_channels=1, num_classes=10))
        adapter = adapter_for(model)
        started = time.perf_counter()
        log(f"training the teacher on {len(images):,} images ({settings.teacher_epochs} epoch(s))")
        config = TrainConfig(epochs=settings.teacher_epochs, lr=settings.teacher_lr or 2e-3, weight_decay=5e-4,
                             schedule="cosine", max_grad_norm=None)
        train(model.to(settings.device), adapter, image_batches(images, labels, 128, settings.seed), config,
              progress=lambda it, total: progress(it, total, "training"))
        adapter.save_folder(model, teacher_dir)
        log(f"teacher saved to {teacher_dir} ({time.perf_counter() - started:.0f} s)")
        return LoadedModel(adapter, model, None)

    def prepare(self, settings: Settings, out: Path, log: Log, progress: Progress, workers: Workers) -> Prepared:
        images, labels = load_fashion_mnist("train")
        test_images, eval_batches = test_set(settings.eval_samples)
        calib, valid, fit = split_train(len(images), settings)
        fit_images, fit_labels = images[fit], labels[fit]
        loaded = teacher_everywhere(workers, lambda: self.teacher(settings, fit_images, fit_labels, out, log, progress),
                                    lambda: self.teacher_structure(settings))
        task = Task(
            adapter=loaded.adapter, model=loaded.model.to(settings.device).eval(),
            train_batches=lambda step: image_batches(fit_images, fit_labels, 128,
                                               settings.seed * 7919 + step)[: settings.distill_steps
                                                                            * workers.world_size],
            calibration_batches=image_batches(images[calib], labels[calib], 256),
            eval_batches=eval_batches,
            validation_batches=image_batches(images[valid], labels[valid], 256),
        )
        return Prepared(sharded(task, workers), "fashion-mnist", latency_batch(test_images))

    @staticmethod
    def teacher_structure(settings: Settings) -> LoadedModel:
        """A model shaped like the teacher rank 0 makes (its values are then copied from rank 0)."""
        model = MobileNetV2Classifier(num_classes=10) if settings.arch == "mobilenet_v2" else SmallResNet(1, 10)
        return LoadedModel(adapter_for(model), model, None)

    def eval_set(self, settings: Settings, loaded: LoadedModel) -> EvalSet:
        images, eval_batches = test_set(settings.eval_samples)
        return EvalSet(eval_batches, "fashion-mnist", latency_batch(images))

    def validation_set(self, settings: Settings, loaded: LoadedModel) -> EvalSet:
        images, labels = load_fashion_mnist("train")
        valid = validation_indices(len(images), settings)
        return EvalSet(image_batches(images[valid], labels[valid], 256), "fashion-mnist validation slice",
                       latency_batch(images))

    def calibration_batches(self, settings: Settings, loaded: LoadedModel) -> tuple[list[dict], str]:
        images, labels = load_fashion_mnist("train")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(settings.seed))
        subset = order[: settings.calibration_samples]
        return image_batches(images[subset], labels[subset], 256), "fashion-mnist"


register_task(ImageClassification())
