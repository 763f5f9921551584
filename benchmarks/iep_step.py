"""Time one training step of IEP knowledge transfer against a plain
cross-entropy step of the same student, in the same process, and break the
IEP step down into its parts.

    PYTHONPATH=src .venv/bin/python benchmarks/iep_step.py
    PYTHONPATH=src .venv/bin/python benchmarks/iep_step.py --batch 128 --device cuda

Parts: the teacher's forward pass (features at the sensing points), the
teacher's SPCA and MPNN (K^T), the student's forward pass, the student's SPCA
and MPNN (K^S); the rest of a step is the losses, the backward passes: one for the plain sum
of the losses (``gradient_control: off``) or one per loss for the clipped
gradients (Eq. 20-21). Random-init networks: the cost does not depend on the
weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kdlens.distill.base import METHODS
from kdlens.distill.iep.gradients import combined_gradients
from kdlens.distill.iep.spca import feature_matrix, top_eigenpair
from kdlens.models import build_model


def _timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds per call over ``repeats`` calls, after a warm-up call
    (the median: a 2-core machine's timings have a long tail)."""
    fn()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--teacher-width", type=float, default=0.25)
    parser.add_argument("--student-width", type=float, default=0.125)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    teacher = build_model("vgg11", num_classes=5, image_size=args.size, width=args.teacher_width).to(device).eval()
    student = build_model("vgg11", num_classes=5, image_size=args.size, width=args.student_width).to(device).train()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 5, (args.batch,), device=device)

    method = METHODS.build("iep", mpnn_epochs=1)
    method.bind(student, teacher)
    with torch.no_grad():
        method.setup(student.features(images[:2], method.layers), teacher.features(images[:2], method.layers))
    method.to(device)

    def teacher_batches():
        for _ in range(3):
            with torch.no_grad():
                features = teacher.features(torch.randn_like(images), method.layers)
            yield features

    method.fit_teacher(teacher_batches, teacher)
    params = [p for p in student.parameters()] + [p for part in method.trainable_parts() for p in part.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    layers = method.layers

    def plain_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(student(images), labels).backward()
        optimizer.step()

    def losses():
        with torch.no_grad():
            target = teacher.features(images, layers)
        logits, features = student.forward_with_features(images, layers)
        return F.cross_entropy(logits, labels), list(method.loss_terms(features, target).values())

    def summed_step():
        optimizer.zero_grad(set_to_none=True)
        task, terms = losses()
        (task + sum(terms)).backward()
        optimizer.step()

    def clipped_step():
        optimizer.zero_grad(set_to_none=True)
        task, terms = losses()
        theta = list(student.parameters())
        for p, g in zip(theta, combined_gradients(task, terms, theta)):
            p.grad = g
        optimizer.step()

    with torch.no_grad():
        target = teacher.features(images, layers)
    senses, _ = method.teacher_knowledge(target)
    _, student_features = student.forward_with_features(images, layers)
    parts = {  # additive: together they are the forward half of the IEP step
        "teacher forward": lambda: teacher.features(images, layers),
        "teacher SPCA + MPNN (K^T)": lambda: method.teacher_knowledge(target),
        "student forward": lambda: student.forward_with_features(images, layers),
        "student SPCA + MPNN (K^S)": lambda: method.student_knowledge(student_features, senses),
    }
    plain = _timed(plain_step, args.repeats, device)
    print(f"device {device}, {args.threads} threads, batch {args.batch}, {args.size} px, "
          f"vgg11 x{args.teacher_width:g} -> x{args.student_width:g}, points {', '.join(layers)}")
    print(f"{'plain CE step (baseline)':42s} {plain * 1e3:8.1f} ms   1.00x")
    for name, step in (("IEP step, plain sum (gradient_control off)", summed_step),
                       ("IEP step, clipped (Eq. 20-21)", clipped_step)):
        seconds = _timed(step, args.repeats, device)
        print(f"{name:42s} {seconds * 1e3:8.1f} ms {seconds / plain:6.2f}x")
    print("parts of the IEP step:")
    for name, part in parts.items():
        seconds = _timed(part, args.repeats, device)
        print(f"  {name:40s} {seconds * 1e3:8.1f} ms {seconds / plain:6.2f}x")
    print("first PCA's top eigenpair per teacher sensing point: ours (squaring) against torch.linalg.eigh:")
    for name, feature in target.items():
        matrices = feature_matrix(feature)
        gram = matrices.mT @ matrices if matrices.shape[1] >= matrices.shape[2] else matrices @ matrices.mT
        ours = _timed(lambda: top_eigenpair(gram), args.repeats, device)
        full = _timed(lambda: torch.linalg.eigh(gram), args.repeats, device)
        print(f"  {name} ({gram.shape[-1]}x{gram.shape[-1]} Gram matrices) {ours * 1e3:7.2f} ms against "
              f"{full * 1e3:7.2f} ms (eigh / ours = {full / ours:.1f}x)")


if __name__ == "__main__":
    main()
